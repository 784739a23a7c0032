// The backward kernel: both halves of the input gradient from the upstream gradient, the
// activation recomputed from the saved input; one pass, one launch.
#include "glu_cuda.cuh"

namespace glu_fused {
namespace cuda {
namespace {

template <Activation A, typename scalar_t, typename Access>
struct BackwardThread {
  using E = Element<A, scalar_t>;
  using Stage = Staging<scalar_t, kBackwardInputs>;
  static constexpr int W = Access::kWidth;
  static constexpr int kItems = Stage::kItems;
  static constexpr int kMinBlocksPerSm = Stage::kMinBlocksPerSm;
  static constexpr const char* kDirection = "backward";

  Tiling tiling;
  PairLayout in;
  PairLayout grad_in;
  RunOffsets in_offsets;
  RunOffsets grad_offsets;
  const scalar_t* gate;
  const scalar_t* value;
  const scalar_t* grad_out;
  scalar_t* grad_gate;
  scalar_t* grad_value;
  scalar_t* out;  // the in-place form's act(gate) * value, dense like grad_out; or null
  typename E::Params params;

  // Where a run's input gradients (and, in the in-place form, outputs) go, and their phases
  // at its items.
  struct Outputs {
    scalar_t* grad_gate;
    scalar_t* grad_value;
    int64_t es;
    bool gate_first;
    PairPhase phase;
    scalar_t* y;
    int y_phase;
  };

  GLU_HD void operator()(uint32_t block, uint32_t thread) const {
    Stretch s;
    if (!tiling.locate(block, thread, s)) return;
    const int64_t at = in_offsets(s.run);
    const int64_t grad_at = grad_offsets(s.run);
    const int64_t es = in.elem_stride;
    Outputs o{grad_gate + grad_at,
              grad_value + grad_at,
              grad_in.elem_stride,
              grad_gate < grad_value,
              {},
              out == nullptr ? nullptr : out + s.run * in.run_len,
              0};
    const scalar_t* g = gate + at;
    const scalar_t* v = value + at;
    const scalar_t* dy = grad_out + s.run * in.run_len;
    const bool gate_first = g < v;
    // The gradients' items start on 16-byte boundaries where they can; the inputs' are
    // where they fall.
    const int head = Access::head_for_pairs(o.grad_gate, o.grad_value);
    tiling.place(W, head, s);
    o.phase = Access::pair_phase(o.grad_gate, o.grad_value, head);
    const PairPhase phase = Access::pair_phase(g, v, head);
    const int dy_phase = Access::dense_phase(dy, head);
    if (o.y != nullptr) o.y_phase = Access::dense_phase(o.y, head);
    using Scalar = ScalarAccess<scalar_t>;
    typename Access::StagedPairs xs[kItems];
    typename Access::StagedDense dys[kItems];
    for_each_item<kItems, W>(
        s,
        [&](int u, int64_t e) {
          xs[u] = Access::load_pair(g, v, e, es, phase);
          dys[u] = Access::load_dense(dy, e, dy_phase);
        },
        [&](int u, int64_t e) {
          finish<Access>(o, e, gate_first, Access::ready(xs[u], phase),
                         Access::ready(dys[u], dy_phase));
        },
        [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            finish<Scalar>(o, k, gate_first, Scalar::load_pair(g, v, k, es),
                           Scalar::load_dense(dy, k));
          }
        });
  }

  // The input gradients of one item from its inputs and upstream gradient.
  template <typename Acc>
  GLU_HD void finish(const Outputs& o, int64_t e, bool gate_first, const typename Acc::PairPacks& x,
                     const typename Acc::Dense& dy) const {
    typename Acc::PairPacks grads;
#pragma unroll
    for (int j = 0; j < Acc::kWidth; ++j) {
      scalar_t gj, vj, dgj, dvj;
      Acc::unpack(x, j, gate_first, gj, vj);
      E::backward(gj, vj, dy.get(j), params, dgj, dvj);
      Acc::pack(grads, j, o.gate_first, dgj, dvj);
    }
    Acc::store_pair(o.grad_gate, o.grad_value, e, o.es, grads, o.phase);
    // Stored last: in the in-place form y is grad_out, read above.
    if (o.y != nullptr) store_outputs<Acc>(o, e, gate_first, x);
  }

  template <typename Acc>
  GLU_HD void store_outputs(const Outputs& o, int64_t e, bool gate_first,
                            const typename Acc::PairPacks& x) const {
    Acc::store_dense_in_phase(o.y, e, forward_outputs<E, Acc>(x, gate_first, params), o.y_phase);
  }
};

template <Activation A, typename scalar_t>
struct Backward {
  static int run(const BackwardCall& call, const Executor& exec) {
    const auto* gate = static_cast<const scalar_t*>(call.gate);
    const auto* value = static_cast<const scalar_t*>(call.value);
    const auto* grad_out = static_cast<const scalar_t*>(call.grad_out);
    auto* grad_gate = static_cast<scalar_t*>(call.grad_gate);
    auto* grad_value = static_cast<scalar_t*>(call.grad_value);
    auto* out = static_cast<scalar_t*>(call.out);
    const auto params = Element<A, scalar_t>::params(call.op);
    const auto make = [&](const Tiling& tiling, auto access) {
      return BackwardThread<A, scalar_t, decltype(access)>{tiling,
                                                           call.in,
                                                           call.grad_in,
                                                           RunOffsets::of(call.in),
                                                           RunOffsets::of(call.grad_in),
                                                           gate,
                                                           value,
                                                           grad_out,
                                                           grad_gate,
                                                           grad_value,
                                                           out,
                                                           params};
    };
    const bool vectorizable = call.in.elem_stride == call.grad_in.elem_stride &&
                              pairs_vectorizable(call.in, gate, value) &&
                              pairs_vectorizable(call.grad_in, grad_gate, grad_value) &&
                              element_aligned<scalar_t>(grad_out) &&
                              (out == nullptr || element_aligned<scalar_t>(out));
    const bool aligned = pairs_aligned16<scalar_t>(call.in, gate, value) &&
                         pairs_aligned16<scalar_t>(call.grad_in, grad_gate, grad_value) &&
                         dense_aligned16<scalar_t>(call.in, grad_out) &&
                         (out == nullptr || dense_aligned16<scalar_t>(call.in, out));
    return run_fastest_path<scalar_t, kBackwardInputs>(exec, call.in, vectorizable, aligned, make);
  }
};

}  // namespace
}  // namespace cuda

int gated_backward_cuda(const BackwardCall& call, void* stream) {
  const cuda::Executor exec{static_cast<cudaStream_t>(stream), false};
  return dispatch<cuda::Backward, cuda::CudaTypes>(call, exec);
}

void gated_backward_cuda_emulated(const BackwardCall& call) {
  const cuda::Executor exec{nullptr, true};
  cuda::check_emulated(dispatch<cuda::Backward, cuda::CudaTypes>(call, exec), "backward");
}

}  // namespace glu_fused
