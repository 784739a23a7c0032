// The backward kernel: both halves of the input gradient from the upstream gradient, the
// activation recomputed from the saved input; one pass, one launch. With RowOptions (a bias,
// token counts), RowsBackwardThread: tiles of rows by columns, and the bias gradient's
// partial sums.
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

// a + b, never contracted with the multiplication that made b (an FMA would add b's exact
// product, not the gradient that is stored): the partials sum the gradients as computed.
GLU_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
GLU_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// The trace's name of a rows backward's path.
inline const char* rows_path_name(const char* name) {
  const std::string n = name;
  if (n == "halves-phased") return "rows-halves-phased";
  if (n == "pairs-phased") return "rows-pairs-phased";
  return "rows-scalar";
}

// The backward with RowOptions (BackwardCall::rows), or that sums the bias gradient: the
// gradients at the biased inputs, zeros for the rows the token counts refuse, and the bias
// gradient's partial sums (BackwardCall::bias_grad_partials). The in-place form (GatedMLP's
// backward with its projections' biases: no RowOptions) writes act(gate) * value over
// grad_out too (store_y); it takes the vector path only where every row is in phase
// (Backward::run), so that no load reaches past the thread's own columns, which other
// threads overwrite. A thread holds `width` columns [c, c + width) of one tile of
// kBiasTileRows rows (Tiling's runs are the tiles, each of 1 item a thread), and walks the
// tile's rows in increasing order, kItems rows' loads issued at once; it adds each valid
// row's unrounded gradients into its columns' sums (of the compute type: float; double for
// double), so each partial is summed in that one order, and writes them (zeros for a tile
// without valid rows) at the end. The columns' biases are loaded once.
// Each row's tensors may lie at any phase against the thread's columns: the phased loads
// shift them into place, and a stored gradient out of phase is written element by element.
// The columns past the last whole item (run_len % width of them) are taken one at a time, by
// the thread that holds them.
template <Activation A, typename scalar_t, typename Access>
struct RowsBackwardThread {
  using E = Element<A, scalar_t>;
  using N = Num<scalar_t>;
  using C = typename N::Compute;
  using Scalar = ScalarAccess<scalar_t>;
  static constexpr int W = Access::kWidth;
  static constexpr int kItems = Staging<scalar_t, kBackwardInputs>::kItems;  // rows at once
  static constexpr int kMinBlocksPerSm = Staging<scalar_t, kBackwardInputs>::kMinBlocksPerSm;
  static constexpr const char* kDirection = "backward";

  Tiling tiling;  // runs: the tiles; run_len: the row's
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
  BiasPairs<scalar_t> bias;
  RowCheck valid;
  C* partials;      // or null
  scalar_t* out;    // the in-place form's act(gate) * value, dense like grad_out; or null

  GLU_HD void operator()(uint32_t block, uint32_t thread) const {
    Stretch s;
    if (!tiling.locate(block, thread, s)) return;
    tiling.place(W, 0, s);
    if (s.first >= s.end) return;
    const int64_t r0 = s.run * kBiasTileRows;
    const int64_t r1 = min64(in.runs, r0 + kBiasTileRows);
    if (s.first + W <= s.end) {
      tile<Access>(s.run, s.first, r0, r1);
    } else {
      for (int64_t c = s.first; c < s.end; ++c) tile<Scalar>(s.run, c, r0, r1);
    }
  }

  // Rows [r0, r1) of tile t, at columns [c, c + Acc::kWidth).
  template <typename Acc>
  GLU_HD void tile(int64_t t, int64_t c, int64_t r0, int64_t r1) const {
    constexpr int kW = Acc::kWidth;
    const int64_t es = in.elem_stride;
    const int64_t grad_es = grad_in.elem_stride;
    typename Acc::PairPacks b{};
    if (bias.on()) {
      const PairPhase bias_phase = Acc::pair_phase(bias.gate, bias.value, c);
      b = Acc::ready(Acc::load_pair(bias.gate, bias.value, c, es, bias_phase), bias_phase);
    }
    C sum_g[kW], sum_v[kW];
#pragma unroll
    for (int j = 0; j < kW; ++j) sum_g[j] = sum_v[j] = C(0);
    for (int64_t r = r0; r < r1; r += kItems) {
      typename Acc::StagedPairs xs[kItems];
      typename Acc::StagedDense dys[kItems];
      bool ok[kItems];
#pragma unroll
      for (int u = 0; u < kItems; ++u) {
        ok[u] = r + u < r1 && valid(r + u);
        if (!ok[u]) continue;
        const int64_t at = in_offsets(r + u);
        const scalar_t* dy = grad_out + (r + u) * in.run_len;
        xs[u] = Acc::load_pair(gate + at, value + at, c, es,
                               Acc::pair_phase(gate + at, value + at, c));
        dys[u] = Acc::load_dense(dy, c, Acc::dense_phase(dy, c));
      }
#pragma unroll
      for (int u = 0; u < kItems; ++u) {
        if (r + u >= r1) continue;
        const int64_t grad_at = grad_offsets(r + u);
        scalar_t* dg = grad_gate + grad_at;
        scalar_t* dv = grad_value + grad_at;
        typename Acc::PairPacks grads{};
        if (!ok[u]) {  // a refused row: zeros
#pragma unroll
          for (int j = 0; j < kW; ++j) Acc::pack(grads, j, dg < dv, N::round(C(0)), N::round(C(0)));
        } else {
          const int64_t at = in_offsets(r + u);
          const scalar_t* g = gate + at;
          const scalar_t* v = value + at;
          const scalar_t* dy = grad_out + (r + u) * in.run_len;
          const auto x = Acc::ready(xs[u], Acc::pair_phase(g, v, c));
          const auto d = Acc::ready(dys[u], Acc::dense_phase(dy, c));
#pragma unroll
          for (int j = 0; j < kW; ++j) {
            scalar_t gj, vj, bgj, bvj;
            Acc::unpack(x, j, g < v, gj, vj);
            Acc::unpack(b, j, bias.gate_first(), bgj, bvj);
            C dg_c, dv_c;
            E::backward(gj, vj, d.get(j), bgj, bvj, bias.on(), params, dg_c, dv_c);
            Acc::pack(grads, j, dg < dv, N::round(dg_c), N::round(dv_c));
            sum_g[j] = add_rn(sum_g[j], dg_c);
            sum_v[j] = add_rn(sum_v[j], dv_c);
          }
        }
        Acc::store_pair(dg, dv, c, grad_es, grads, Acc::pair_phase(dg, dv, c));
        if (out != nullptr && ok[u]) store_y<Acc>(xs[u], b, r + u, c);
      }
    }
    if (partials == nullptr) return;
    C* p = partials + t * 2 * in.run_len + c;
#pragma unroll
    for (int j = 0; j < kW; ++j) {
      store_one(p + j, sum_g[j]);
      store_one(p + in.run_len + j, sum_v[j]);
    }
  }

  // The in-place form's act(gate) * value of row r at columns [c, c + Acc::kWidth), from the
  // row's staged inputs, over its grad_out (read with the inputs): after the row's gradients
  // are stored, so that they are no longer held in registers while it is computed.
  template <typename Acc>
  GLU_HD void store_y(const typename Acc::StagedPairs& staged, const typename Acc::PairPacks& b,
                      int64_t r, int64_t c) const {
    const int64_t at = in_offsets(r);
    const scalar_t* g = gate + at;
    const scalar_t* v = value + at;
    const auto x = Acc::ready(staged, Acc::pair_phase(g, v, c));
    scalar_t* y = out + r * in.run_len;
    Acc::store_dense_in_phase(
        y, c, forward_outputs<E, Acc>(x, g < v, b, bias.gate_first(), bias.on(), params),
        Acc::dense_phase(y, c));
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
    if (call.rows.has_bias() || call.rows.valid_rows != nullptr ||
        call.bias_grad_partials != nullptr) {
      const auto bias = BiasPairs<scalar_t>::of(call.rows);
      const bool bias_ok = bias_vectorizable(call.in, bias);
      // In place, a phased load would read neighbours' columns that they write over.
      const bool in_phase = out == nullptr || aligned;
      return with_access<scalar_t, false>(
          call.in, vectorizable && bias_ok && in_phase, false, [&](auto access) {
            using Access = decltype(access);
            using Thread = RowsBackwardThread<A, scalar_t, Access>;
            Tiling tiling;
            if (!Tiling::plan(ceil_div(call.in.runs, kBiasTileRows), call.in.run_len,
                              Access::kWidth, 1, tiling)) {
              return int(cudaErrorInvalidConfiguration);
            }
            const Thread thread{tiling,     call.in,    call.grad_in, RunOffsets::of(call.in),
                                RunOffsets::of(call.grad_in), gate, value, grad_out,
                                grad_gate,  grad_value, params,       bias,
                                RowCheck::of(call.rows),
                                static_cast<typename Thread::C*>(call.bias_grad_partials),
                                out};
            return exec.run(tiling, thread, rows_path_name(Access::kName));
          });
    }
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
