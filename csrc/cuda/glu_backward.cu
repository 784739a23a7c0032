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
  typename E::Params params;

  GLU_HD void operator()(uint32_t block, uint32_t thread) const {
    Stretch s;
    if (!tiling.stretch(block, thread, W, s)) return;
    const int64_t at = in_offsets(s.run);
    const int64_t grad_at = grad_offsets(s.run);
    const int64_t es = in.elem_stride;
    const Outputs o{grad_gate + grad_at, grad_value + grad_at, grad_in.elem_stride,
                    grad_gate < grad_value};
    const scalar_t* g = gate + at;
    const scalar_t* v = value + at;
    const scalar_t* dy = grad_out + s.run * in.run_len;
    const bool gate_first = g < v;
    using Scalar = ScalarAccess<scalar_t>;
    typename Access::PairPacks xs[kItems];
    typename Access::Dense dys[kItems];
    for_each_item<kItems, W>(
        s,
        [&](int u, int64_t e) {
          xs[u] = Access::load_pair(g, v, e, es);
          dys[u] = Access::load_dense(dy, e);
        },
        [&](int u, int64_t e) { finish<Access>(o, e, gate_first, xs[u], dys[u]); },
        [&](int64_t e) {
          for (int64_t k = e; k < s.end; ++k) {
            finish<Scalar>(o, k, gate_first, Scalar::load_pair(g, v, k, es),
                           Scalar::load_dense(dy, k));
          }
        });
  }

  // Where a run's input gradients go.
  struct Outputs {
    scalar_t* grad_gate;
    scalar_t* grad_value;
    int64_t es;
    bool gate_first;
  };

  // The input gradients of one item from its staged inputs and upstream gradient.
  template <typename Acc>
  GLU_HD void finish(const Outputs& o, int64_t e, bool gate_first,
                     const typename Acc::PairPacks& x, const typename Acc::Dense& dy) const {
    typename Acc::PairPacks grads;
#pragma unroll
    for (int j = 0; j < Acc::kWidth; ++j) {
      scalar_t gj, vj, dgj, dvj;
      Acc::unpack(x, j, gate_first, gj, vj);
      E::backward(gj, vj, dy.get(j), params, dgj, dvj);
      Acc::pack(grads, j, o.gate_first, dgj, dvj);
    }
    Acc::store_pair(o.grad_gate, o.grad_value, e, o.es, grads);
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
    const auto params = Element<A, scalar_t>::params(call.op);
    const auto make = [&](const Tiling& tiling, auto access) {
      return BackwardThread<A, scalar_t, decltype(access)>{
          tiling,   call.in,    call.grad_in, RunOffsets::of(call.in),
          RunOffsets::of(call.grad_in), gate, value, grad_out, grad_gate, grad_value, params};
    };
    const bool aligned = call.in.elem_stride == call.grad_in.elem_stride &&
                         pairs_aligned16<scalar_t>(call.in, gate, value) &&
                         pairs_aligned16<scalar_t>(call.grad_in, grad_gate, grad_value) &&
                         dense_aligned16<scalar_t>(call.in, grad_out);
    return run_fastest_path<scalar_t, kBackwardInputs>(exec, call.in, aligned, make);
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
