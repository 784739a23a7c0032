// The forward kernel: out[r, e] = act(gate(r, e)) * value(r, e), one pass, one launch; with
// RowOptions (a bias, token counts), act(gate(r, e) + bg(e)) * (value(r, e) + bv(e)) over the
// valid rows, by the kRows variants of the same thread body.
#include "glu_cuda.cuh"

namespace glu_fused {
namespace cuda {
namespace {

// kRows: the variant that honours RowOptions (ForwardCall::rows): a run (a row) that the
// counts refuse is neither read nor written, and where there is a bias, each item loads its
// columns' biases (the same for every row: L1 hits) after its inputs.
template <Activation A, typename scalar_t, typename Access, bool kRows = false>
struct ForwardThread {
  using E = Element<A, scalar_t>;
  using Stage = Staging<scalar_t, kForwardInputs>;
  static constexpr int W = Access::kWidth;
  static constexpr int kItems = Stage::kItems;
  static constexpr int kMinBlocksPerSm = Stage::kMinBlocksPerSm;
  static constexpr const char* kDirection = "forward";

  Tiling tiling;
  PairLayout in;
  RunOffsets in_offsets;
  const scalar_t* gate;
  const scalar_t* value;
  scalar_t* out;
  typename E::Params params;
  BiasPairs<scalar_t> bias = {};  // kRows only
  RowCheck valid = {};            // kRows only

  GLU_HD void operator()(uint32_t block, uint32_t thread) const {
    Stretch s;
    if (!tiling.locate(block, thread, s)) return;
    if constexpr (kRows) {
      if (!valid(s.run)) return;
    }
    const int64_t at = in_offsets(s.run);
    const int64_t es = in.elem_stride;
    const scalar_t* g = gate + at;
    const scalar_t* v = value + at;
    scalar_t* y = out + s.run * in.run_len;
    const bool gate_first = g < v;
    // The outputs' items start on 16-byte boundaries; the inputs' are where they fall.
    const int head = Access::head_for_dense(y);
    tiling.place(W, head, s);
    const PairPhase phase = Access::pair_phase(g, v, head);
    using Scalar = ScalarAccess<scalar_t>;
    typename Access::StagedPairs xs[kItems];
    if constexpr (kRows) {
      // The biases' phase at the items (whole packs apart, as the inputs').
      const PairPhase bias_phase =
          bias.on() ? Access::pair_phase(bias.gate, bias.value, head) : PairPhase{};
      for_each_item<kItems, W>(
          s, [&](int u, int64_t e) { xs[u] = Access::load_pair(g, v, e, es, phase); },
          [&](int u, int64_t e) {
            typename Access::PairPacks b{};
            if (bias.on()) {
              b = Access::ready(Access::load_pair(bias.gate, bias.value, e, es, bias_phase),
                                bias_phase);
            }
            finish_biased<Access>(y, e, gate_first, Access::ready(xs[u], phase), b);
          },
          [&](int64_t begin, int64_t end) {
            for (int64_t k = begin; k < end; ++k) {
              typename Scalar::PairPacks b{};
              if (bias.on()) b = Scalar::load_pair(bias.gate, bias.value, k, es);
              finish_biased<Scalar>(y, k, gate_first, Scalar::load_pair(g, v, k, es), b);
            }
          });
      return;
    }
    for_each_item<kItems, W>(
        s, [&](int u, int64_t e) { xs[u] = Access::load_pair(g, v, e, es, phase); },
        [&](int u, int64_t e) { finish<Access>(y, e, gate_first, Access::ready(xs[u], phase)); },
        [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            finish<Scalar>(y, k, gate_first, Scalar::load_pair(g, v, k, es));
          }
        });
  }

  // The outputs of one item from its inputs.
  template <typename Acc>
  GLU_HD void finish(scalar_t* y, int64_t e, bool gate_first,
                     const typename Acc::PairPacks& x) const {
    Acc::store_dense(y, e, forward_outputs<E, Acc>(x, gate_first, params));
  }

  // kRows: the same, with the item's biases `b` (unused without a bias).
  template <typename Acc>
  GLU_HD void finish_biased(scalar_t* y, int64_t e, bool gate_first,
                            const typename Acc::PairPacks& x,
                            const typename Acc::PairPacks& b) const {
    const bool on = bias.on(), bias_first = bias.gate_first();
    Acc::store_dense(y, e, forward_outputs<E, Acc>(x, gate_first, b, bias_first, on, params));
  }
};

template <Activation A, typename scalar_t>
struct Forward {
  static int run(const ForwardCall& call, const Executor& exec) {
    const auto* gate = static_cast<const scalar_t*>(call.gate);
    const auto* value = static_cast<const scalar_t*>(call.value);
    auto* out = static_cast<scalar_t*>(call.out);
    const auto params = Element<A, scalar_t>::params(call.op);
    const auto make = [&](const Tiling& tiling, auto access) {
      return ForwardThread<A, scalar_t, decltype(access)>{
          tiling, call.in, RunOffsets::of(call.in), gate, value, out, params};
    };
    const bool vectorizable =
        pairs_vectorizable(call.in, gate, value) && element_aligned<scalar_t>(out);
    if (call.rows.has_bias() || call.rows.valid_rows != nullptr) {
      return run_rows(call, exec, gate, value, out, params, vectorizable);
    }
    const bool aligned =
        pairs_aligned16<scalar_t>(call.in, gate, value) && dense_aligned16<scalar_t>(call.in, out);
    return run_fastest_path<scalar_t, kForwardInputs>(exec, call.in, vectorizable, aligned, make);
  }

  // RowOptions: the kRows thread bodies, on the phased paths only (an aligned layout is their
  // phase 0) and float64 scalar, as FP8's: fewer variants to build.
  static int run_rows(const ForwardCall& call, const Executor& exec, const scalar_t* gate,
                      const scalar_t* value, scalar_t* out,
                      const typename Element<A, scalar_t>::Params& params, bool vectorizable) {
    const auto bias = BiasPairs<scalar_t>::of(call.rows);
    const RowCheck valid = RowCheck::of(call.rows);
    vectorizable = vectorizable && bias_vectorizable(call.in, bias);
    return with_access<scalar_t, false>(call.in, vectorizable, false, [&](auto access) {
      using Access = decltype(access);
      using Thread = ForwardThread<A, scalar_t, Access, true>;
      return run_path<Access, Thread::kItems>(exec, call.in, [&](const Tiling& tiling, Access) {
        return Thread{tiling, call.in, RunOffsets::of(call.in), gate, value, out, params,
                      bias, valid};
      });
    });
  }
};

}  // namespace
}  // namespace cuda

int gated_forward_cuda(const ForwardCall& call, void* stream) {
  const cuda::Executor exec{static_cast<cudaStream_t>(stream), false};
  return dispatch<cuda::Forward, cuda::CudaTypes>(call, exec);
}

void gated_forward_cuda_emulated(const ForwardCall& call) {
  const cuda::Executor exec{nullptr, true};
  cuda::check_emulated(dispatch<cuda::Forward, cuda::CudaTypes>(call, exec), "forward");
}

}  // namespace glu_fused
