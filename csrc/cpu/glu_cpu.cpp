// The CPU kernels: one pass over memory, SIMD through ATen's Vectorized, parallel over cores
// with at::parallel_for. Compiled once per SIMD level (build_config.py), as ATen's kernels
// are: CPU_CAPABILITY (DEFAULT, AVX2, AVX512) names the level's namespace, here and in
// ATen's Vectorized, and CPU_CAPABILITY_AVX2 / _AVX512 select Vectorized's implementation.
//
// Every element, tails included, goes through the same vector code: a short stretch is
// loaded into a zero-padded vector and stored back partially. So an element's result never
// depends on where it sits in the tensor (batch invariance), and there are no atomics or
// reductions, so results are bitwise reproducible.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../glu_dispatch.h"
#include "../glu_kernels.h"
#include "vec_math.h"

#ifndef CPU_CAPABILITY
#error "glu_cpu.cpp is compiled once per level, with -DCPU_CAPABILITY=<level> (setup.py)"
#endif

namespace glu_fused {
namespace {

using at::vec::Vectorized;

// kWidth consecutive elements of one tensor, held as K vectors of the compute type (float
// for half and bfloat16, else scalar_t itself). K = 2 gives every step two independent
// dependency chains through exp and the division, which the core overlaps.
template <typename scalar_t>
struct Lanes {
  using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Compute = Vectorized<opmath_t>;
  using Storage = Vectorized<scalar_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr int K = 2;
  static constexpr int kPerStorage = Storage::size() / Compute::size();  // 2 if reduced
  static constexpr int kStorages = K / kPerStorage;
  static constexpr int64_t kWidth = K * Compute::size();

  Compute v[K];

  // Loads `count` elements (any number; at most kWidth are read); the lanes past them are 0.
  GLU_HD static Lanes load(const scalar_t* p, int64_t count) {
    Lanes out;
    for (int i = 0; i < kStorages; ++i) {
      const int64_t n = std::clamp<int64_t>(count - i * Storage::size(), 0, Storage::size());
      const scalar_t* at = p + i * Storage::size();
      // The full load is its own branch: the common case stays free of the partial one.
      const Storage raw = n == Storage::size() ? Storage::loadu(at)
                          : n > 0              ? Storage::loadu(at, n)
                                               : Storage(scalar_t(0));
      out.set(i, raw);
    }
    return out;
  }

  // kWidth elements, no bounds: the body of every run but its tail.
  GLU_HD static Lanes load_full(const scalar_t* p) {
    Lanes out;
    for (int i = 0; i < kStorages; ++i) out.set(i, Storage::loadu(p + i * Storage::size()));
    return out;
  }

  GLU_HD void set(int i, const Storage& raw) {
    if constexpr (kReduced) {
      std::tie(v[2 * i], v[2 * i + 1]) = at::vec::convert_to_float<scalar_t>(raw);
    } else {
      v[i] = raw;
    }
  }

  GLU_HD Storage get(int i) const {
    if constexpr (kReduced) {
      return at::vec::convert_from_float<scalar_t>(v[2 * i], v[2 * i + 1]);
    } else {
      return v[i];
    }
  }

  // Stores the first `count` elements (any number; at most kWidth are written).
  GLU_HD void store(scalar_t* p, int64_t count) const {
    for (int i = 0; i < kStorages; ++i) {
      const int64_t n = std::clamp<int64_t>(count - i * Storage::size(), 0, Storage::size());
      if (n == Storage::size()) {
        get(i).store(p + i * Storage::size());
      } else if (n > 0) {
        get(i).store(p + i * Storage::size(), n);
      }
    }
  }

  GLU_HD void store_full(scalar_t* p) const {
    for (int i = 0; i < kStorages; ++i) get(i).store(p + i * Storage::size());
  }
};

// The gates and values of up to kWidth consecutive output elements of one run.
template <typename scalar_t>
struct PairLanes {
  using L = Lanes<scalar_t>;
  L gate;
  L value;

  // kFull: count is kWidth, and the loads need no bounds.
  template <bool kFull>
  GLU_HD static L load_lanes(const scalar_t* p, int64_t count) {
    if constexpr (kFull) {
      return L::load_full(p);
    } else {
      return L::load(p, count);
    }
  }

  template <bool kFull>
  GLU_HD static void store_lanes(const L& lanes, scalar_t* p, int64_t count) {
    if constexpr (kFull) {
      lanes.store_full(p);
    } else {
      lanes.store(p, count);
    }
  }

  // kPairs false: two separate stretches. kPairs true: one stretch of interleaved pairs,
  // split with deinterleave2; `gate_first` says whether gates sit at the even positions.
  template <bool kFull, bool kPairs>
  GLU_HD static PairLanes load(const scalar_t* g, const scalar_t* v, int64_t count) {
    PairLanes out;
    if constexpr (!kPairs) {
      out.gate = load_lanes<kFull>(g, count);
      out.value = load_lanes<kFull>(v, count);
    } else {
      const bool gate_first = g < v;
      const scalar_t* base = gate_first ? g : v;
      const L lo = load_lanes<kFull>(base, 2 * count);
      const L hi = load_lanes<kFull>(base + L::kWidth, 2 * count - L::kWidth);
      L& first = gate_first ? out.gate : out.value;
      L& second = gate_first ? out.value : out.gate;
      deinterleave(lo, hi, first, second);
    }
    return out;
  }

  // Adds the bias of these elements, laid out as they are (RowOptions, glu_kernels.h).
  template <bool kFull, bool kPairs>
  GLU_HD void add_bias(const scalar_t* gb, const scalar_t* vb, int64_t count) {
    const PairLanes b = load<kFull, kPairs>(gb, vb, count);
    for (int j = 0; j < L::K; ++j) {
      gate.v[j] = gate.v[j] + b.gate.v[j];
      value.v[j] = value.v[j] + b.value.v[j];
    }
  }

  // Splits 2 * kWidth interleaved elements (lo, hi) into evens and odds.
  GLU_HD static void deinterleave(const L& lo, const L& hi, L& evens, L& odds) {
    typename L::Compute seq[2 * L::K];
    for (int j = 0; j < L::K; ++j) {
      seq[j] = lo.v[j];
      seq[L::K + j] = hi.v[j];
    }
    for (int j = 0; j < L::K; ++j) {
      std::tie(evens.v[j], odds.v[j]) = at::vec::deinterleave2(seq[2 * j], seq[2 * j + 1]);
    }
  }

  // The inverse of load(): stores gate and value lanes back to their places.
  template <bool kFull, bool kPairs>
  GLU_HD void store(scalar_t* g, scalar_t* v, int64_t count) const {
    if constexpr (!kPairs) {
      store_lanes<kFull>(gate, g, count);
      store_lanes<kFull>(value, v, count);
    } else {
      const bool gate_first = g < v;
      const L& first = gate_first ? gate : value;
      const L& second = gate_first ? value : gate;
      typename L::Compute seq[2 * L::K];
      for (int j = 0; j < L::K; ++j) {
        std::tie(seq[2 * j], seq[2 * j + 1]) = at::vec::interleave2(first.v[j], second.v[j]);
      }
      L lo, hi;
      for (int j = 0; j < L::K; ++j) {
        lo.v[j] = seq[j];
        hi.v[j] = seq[L::K + j];
      }
      scalar_t* base = gate_first ? g : v;
      store_lanes<kFull>(lo, base, 2 * count);
      store_lanes<kFull>(hi, base + L::kWidth, 2 * count - L::kWidth);
    }
  }
};

// Elements per parallel task, as ATen's elementwise kernels use.
constexpr int64_t kGrainElements = 32768;

// Splits the output's elements over the cores and calls body(run, first, count) for each
// stretch of a run that a task covers; the body walks it in vector blocks. The per-run index
// arithmetic (divisions) happens once per stretch, not per block.
template <typename Body>
void for_each_stretch(const PairLayout& layout, const Body& body) {
  const int64_t len = layout.run_len;
  at::parallel_for(0, layout.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    int64_t run = begin / len;
    int64_t first = begin % len;
    for (int64_t at = begin; at < end; ++run, first = 0) {
      const int64_t count = std::min(len - first, end - at);
      body(run, first, count);
      at += count;
    }
  });
}

// Calls block(std::true_type, done, kWidth) for the full blocks of a stretch of `count`
// elements and block(std::false_type, done, n) for its tail; the tail runs the same vector
// code on zero-padded lanes, so it gives bitwise what a full block would.
template <int64_t kWidth, typename Block>
GLU_HD void for_each_block_of(int64_t count, const Block& block) {
  int64_t done = 0;
  for (; done + kWidth <= count; done += kWidth) block(std::true_type{}, done, kWidth);
  if (done < count) block(std::false_type{}, done, count - done);
}

template <typename scalar_t>
ActParams<typename Lanes<scalar_t>::Compute> vector_params(const ActivationCall& op) {
  using C = typename Lanes<scalar_t>::Compute;
  using opmath_t = typename Lanes<scalar_t>::opmath_t;
  return {C(static_cast<opmath_t>(op.alpha)), C(static_cast<opmath_t>(op.limit))};
}

// Calls f(std::true_type{}) or f(std::false_type{}): a flag of the call made a constant of its
// loops, so that their bodies carry no branch on it.
template <typename F>
void with_flag(bool flag, const F& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// A stretch's bias, from its first element's offset in the bias (nullptr: none).
template <typename scalar_t>
struct Bias {
  const scalar_t* gate = nullptr;
  const scalar_t* value = nullptr;
  Bias(const RowOptions& rows, int64_t offset) {
    if (!rows.has_bias()) return;
    gate = static_cast<const scalar_t*>(rows.gate_bias) + offset;
    value = static_cast<const scalar_t*>(rows.value_bias) + offset;
  }
};

// The block bodies below read only locals of their stretch's lambda (its own copies of the
// parameters): the vector stores may alias anything, and what a body reads through a reference
// the compiler would load again after each of them.
template <Activation A, typename scalar_t>
struct ForwardKernel {
  static void run(const ForwardCall& call) {
    using L = Lanes<scalar_t>;
    using Math = Gated<A, typename L::Compute>;
    using P = PairLanes<scalar_t>;
    const auto params = vector_params<scalar_t>(call.op);
    const PairLayout& in = call.in;
    const auto* gate = static_cast<const scalar_t*>(call.gate);
    const auto* value = static_cast<const scalar_t*>(call.value);
    auto* out = static_cast<scalar_t*>(call.out);
    const RowOptions rows = call.rows;
    with_flag(in.elem_stride == 2, [&](auto pairs) {
      constexpr bool kPairs = decltype(pairs)::value;
      constexpr int64_t kStride = kPairs ? 2 : 1;
      for_each_stretch(in, [&](int64_t run, int64_t first, int64_t count) {
        if (!rows.row_valid(run)) return;
        const auto p = params;
        const int64_t at = in.run_offset(run) + first * kStride;
        const scalar_t* g = gate + at;
        const scalar_t* v = value + at;
        const Bias<scalar_t> bias(rows, first * kStride);
        scalar_t* y_out = out + run * in.run_len + first;
        auto block = [&](auto full, int64_t done, int64_t n) C10_ALWAYS_INLINE_ATTRIBUTE {
          constexpr bool kFull = decltype(full)::value;
          const int64_t shift = done * kStride;
          auto x = P::template load<kFull, kPairs>(g + shift, v + shift, n);
          if (bias.gate != nullptr) {
            x.template add_bias<kFull, kPairs>(bias.gate + shift, bias.value + shift, n);
          }
          L y;
          for (int j = 0; j < L::K; ++j) y.v[j] = Math::forward(x.gate.v[j], x.value.v[j], p);
          P::template store_lanes<kFull>(y, y_out + done, n);
        };
        for_each_block_of<L::kWidth>(count, block);
      });
    });
  }
};

template <Activation A, typename scalar_t>
struct BackwardKernel {
  static void run(const BackwardCall& call) {
    using L = Lanes<scalar_t>;
    using Math = Gated<A, typename L::Compute>;
    using P = PairLanes<scalar_t>;
    const auto params = vector_params<scalar_t>(call.op);
    const PairLayout& in = call.in;
    const PairLayout& gin = call.grad_in;
    const auto* gate = static_cast<const scalar_t*>(call.gate);
    const auto* value = static_cast<const scalar_t*>(call.value);
    const auto* grad_out = static_cast<const scalar_t*>(call.grad_out);
    auto* grad_gate = static_cast<scalar_t*>(call.grad_gate);
    auto* grad_value = static_cast<scalar_t*>(call.grad_value);
    auto* out = static_cast<scalar_t*>(call.out);
    with_flag(in.elem_stride == 2, [&](auto pairs) {
      // The in-place form writes the forward's result over grad_out.
      with_flag(out != nullptr, [&](auto in_place) {
        constexpr bool kPairs = decltype(pairs)::value;
        constexpr bool kInPlace = decltype(in_place)::value;
        constexpr int64_t kStride = kPairs ? 2 : 1;
        for_each_stretch(in, [&](int64_t run, int64_t first, int64_t count) {
          const auto p = params;
          const int64_t at = in.run_offset(run) + first * kStride;
          const int64_t grad_at = gin.run_offset(run) + first * kStride;
          const int64_t dense_at = run * in.run_len + first;
          const scalar_t* g = gate + at;
          const scalar_t* v = value + at;
          const scalar_t* dy_in = grad_out + dense_at;
          scalar_t* dg_out = grad_gate + grad_at;
          scalar_t* dv_out = grad_value + grad_at;
          scalar_t* y_out = kInPlace ? out + dense_at : nullptr;
          auto block = [&](auto full, int64_t done, int64_t n) C10_ALWAYS_INLINE_ATTRIBUTE {
            constexpr bool kFull = decltype(full)::value;
            const int64_t shift = done * kStride;
            const auto x = P::template load<kFull, kPairs>(g + shift, v + shift, n);
            const L dy = P::template load_lanes<kFull>(dy_in + done, n);
            P dx;
            for (int j = 0; j < L::K; ++j) {
              Math::backward(x.gate.v[j], x.value.v[j], dy.v[j], p, dx.gate.v[j], dx.value.v[j]);
            }
            dx.template store<kFull, kPairs>(dg_out + shift, dv_out + shift, n);
            if constexpr (kInPlace) {
              L y;
              for (int j = 0; j < L::K; ++j) y.v[j] = Math::forward(x.gate.v[j], x.value.v[j], p);
              P::template store_lanes<kFull>(y, y_out + done, n);
            }
          };
          for_each_block_of<L::kWidth>(count, block);
        });
      });
    });
  }
};

// The backward of a call with a bias or token counts (RowOptions), or that sums the bias
// gradient, by tiles of kBiasTileRows rows, in parallel over the tiles: each row's gradients
// recomputed at the biased inputs, a refused row's written as zeros, and, where the call asks,
// the tile's bias-gradient partials: per column, the float32 sum of the unrounded gradients
// over the tile's rows in increasing order (fixed whatever the threads). The in-place form
// (`out`: GatedMLP's backward with its projections' biases) writes act(gate) * value too.
template <Activation A, typename scalar_t>
struct BackwardRowsKernel {
  static void run(const BackwardCall& call) {
    using L = Lanes<scalar_t>;
    const auto params = vector_params<scalar_t>(call.op);
    const PairLayout& in = call.in;
    const RowOptions rows = call.rows;
    const int64_t len = in.run_len;
    const int64_t tiles = (in.runs + kBiasTileRows - 1) / kBiasTileRows;
    using opmath_t = typename L::opmath_t;
    auto* partials = static_cast<opmath_t*>(call.bias_grad_partials);
    with_flag(in.elem_stride == 2, [&](auto pairs) {
      constexpr bool kPairs = decltype(pairs)::value;
      const int64_t grain =
          std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, len * kBiasTileRows));
      at::parallel_for(0, tiles, grain, [&](int64_t t_begin, int64_t t_end) {
        // Sums padded by a vector block: the lanes past a row's end add zeros.
        std::vector<opmath_t> sums(partials != nullptr ? 2 * (len + L::kWidth) : 0);
        opmath_t* gate_sum = sums.data();
        opmath_t* value_sum = gate_sum + len + L::kWidth;
        for (int64_t t = t_begin; t < t_end; ++t) {
          std::fill(sums.begin(), sums.end(), opmath_t(0));
          const int64_t last = std::min(in.runs, (t + 1) * kBiasTileRows);
          for (int64_t r = t * kBiasTileRows; r < last; ++r) {
            row(call, params, r, rows.row_valid(r), gate_sum, value_sum,
                std::integral_constant<bool, kPairs>{});
          }
          if (partials != nullptr) {
            std::copy(gate_sum, gate_sum + len, partials + (2 * t) * len);
            std::copy(value_sum, value_sum + len, partials + (2 * t + 1) * len);
          }
        }
      });
    });
  }

  // Adds lanes to sums[0, kWidth), in the compute type.
  static void accumulate(const Lanes<scalar_t>& lanes, typename Lanes<scalar_t>::opmath_t* sums) {
    using C = typename Lanes<scalar_t>::Compute;
    for (int j = 0; j < Lanes<scalar_t>::K; ++j) {
      (C::loadu(sums + j * C::size()) + lanes.v[j]).store(sums + j * C::size());
    }
  }

  template <bool kPairs>
  static void row(const BackwardCall& call, const ActParams<typename Lanes<scalar_t>::Compute> p,
                  int64_t r, bool valid, typename Lanes<scalar_t>::opmath_t* gate_sum,
                  typename Lanes<scalar_t>::opmath_t* value_sum,
                  std::integral_constant<bool, kPairs>) {
    using L = Lanes<scalar_t>;
    using Math = Gated<A, typename L::Compute>;
    using P = PairLanes<scalar_t>;
    constexpr int64_t kStride = kPairs ? 2 : 1;
    const PairLayout& in = call.in;
    const int64_t grad_at = call.grad_in.run_offset(r);
    scalar_t* dg_out = static_cast<scalar_t*>(call.grad_gate) + grad_at;
    scalar_t* dv_out = static_cast<scalar_t*>(call.grad_value) + grad_at;
    if (!valid) {
      P zeros;
      for (int j = 0; j < L::K; ++j) zeros.gate.v[j] = zeros.value.v[j] = typename L::Compute(0);
      for_each_block_of<L::kWidth>(in.run_len, [&](auto full, int64_t done, int64_t n) {
        constexpr bool kFull = decltype(full)::value;
        zeros.template store<kFull, kPairs>(dg_out + done * kStride, dv_out + done * kStride, n);
      });
      return;
    }
    const int64_t at = in.run_offset(r);
    const scalar_t* g = static_cast<const scalar_t*>(call.gate) + at;
    const scalar_t* v = static_cast<const scalar_t*>(call.value) + at;
    const scalar_t* dy_in = static_cast<const scalar_t*>(call.grad_out) + r * in.run_len;
    const Bias<scalar_t> bias(call.rows, 0);
    const bool sum = call.bias_grad_partials != nullptr;
    scalar_t* y_out =
        call.out == nullptr ? nullptr : static_cast<scalar_t*>(call.out) + r * in.run_len;
    for_each_block_of<L::kWidth>(in.run_len, [&](auto full, int64_t done, int64_t n) {
      constexpr bool kFull = decltype(full)::value;
      const int64_t shift = done * kStride;
      auto x = P::template load<kFull, kPairs>(g + shift, v + shift, n);
      if (bias.gate != nullptr) {
        x.template add_bias<kFull, kPairs>(bias.gate + shift, bias.value + shift, n);
      }
      const L dy = P::template load_lanes<kFull>(dy_in + done, n);
      P dx;
      for (int j = 0; j < L::K; ++j) {
        Math::backward(x.gate.v[j], x.value.v[j], dy.v[j], p, dx.gate.v[j], dx.value.v[j]);
      }
      if (sum) {
        accumulate(dx.gate, gate_sum + done);
        accumulate(dx.value, value_sum + done);
      }
      dx.template store<kFull, kPairs>(dg_out + shift, dv_out + shift, n);
      if (y_out != nullptr) {  // after dy's load: in the in-place form y is grad_out
        L y;
        for (int j = 0; j < L::K; ++j) y.v[j] = Math::forward(x.gate.v[j], x.value.v[j], p);
        P::template store_lanes<kFull>(y, y_out + done, n);
      }
    });
  }
};

// ---- FP8 output -----------------------------------------------------------------------

// A thread's buffer of activations: a block's, or a stretch's in chunks of this many.
constexpr int64_t kFp8Chunk = 2048;

using VecF = Vectorized<float>;
using VecI = Vectorized<int32_t>;

// Fp8Rule::nan_max on vectors: the larger of m and |y| lane by lane, a NaN winning. On the
// bits: with the sign cleared, float order is the order of the bits as integers, and a NaN's
// exceed every other's, so one integer max does it (compares and blends cost 3x as much).
C10_ALWAYS_INLINE VecF nan_max(const VecF& m, const VecF& y) {
  const VecI b = at::vec::cast<int32_t>(y) & VecI(0x7fffffff);
  return at::vec::cast<float>(at::vec::maximum(at::vec::cast<int32_t>(m), b));
}

// The lanes' nan_max, by shuffles (every lane is >= 0 or NaN).
C10_ALWAYS_INLINE float reduce_nan_max(const VecF& m) {
  return at::vec::vec_reduce_all<float>([](const VecF& a, const VecF& b) { return nan_max(a, b); },
                                        m);
}

// y = act(gate) * value of `count` consecutive output elements of one run, as float32 into
// `y`, through the forward kernel's own vector code (so rounded to scalar_t exactly as the
// plain result is, where `round`); returns their amax (a NaN among them: NaN). The rounding
// and the FP8 type are run-time choices: as template arguments they multiplied this file's
// build eightfold, once per SIMD level.
template <Activation A, typename scalar_t, bool kPairs>
struct Activations {
  using L = Lanes<scalar_t>;
  using Math = Gated<A, typename L::Compute>;
  using P = PairLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  static constexpr int64_t kStride = kPairs ? 2 : 1;
  static constexpr bool kFloatLanes = std::is_same_v<opmath_t, float>;

  ActParams<typename L::Compute> params;
  PairLayout in;
  const scalar_t* gate;
  const scalar_t* value;
  bool round;
  RowOptions rows;

  bool valid(int64_t run) const { return rows.row_valid(run); }

  // Also writes the amax of every `amax_block` elements (a multiple of L::kWidth) to
  // amaxes; kStore false: the amaxes alone (the per-tensor scale's first pass).
  template <bool kStore = true>
  float operator()(int64_t run, int64_t first, int64_t count, float* y, int64_t amax_block = 0,
                   float* amaxes = nullptr) const {
    const auto p = params;
    const int64_t at = in.run_offset(run) + first * kStride;
    const scalar_t* g = gate + at;
    const scalar_t* v = value + at;
    const Bias<scalar_t> bias(rows, first * kStride);
    VecF m(0.0f);
    VecF all(0.0f);
    int64_t since = 0;
    auto block = [&](auto full, int64_t done, int64_t n) C10_ALWAYS_INLINE_ATTRIBUTE {
      constexpr bool kFull = decltype(full)::value;
      const int64_t shift = done * kStride;
      auto x = P::template load<kFull, kPairs>(g + shift, v + shift, n);
      if (bias.gate != nullptr) {
        x.template add_bias<kFull, kPairs>(bias.gate + shift, bias.value + shift, n);
      }
      L lanes;
      for (int j = 0; j < L::K; ++j) lanes.v[j] = Math::forward(x.gate.v[j], x.value.v[j], p);
      if constexpr (kFloatLanes) {
        if constexpr (L::kReduced) {
          if (round) {
            for (int i = 0; i < L::kStorages; ++i) lanes.set(i, lanes.get(i));  // the plain store's
          }
        }
        // Lanes past n hold the activation of zero inputs, 0: they leave the amax alone.
        for (int j = 0; j < L::K; ++j) {
          m = nan_max(m, lanes.v[j]);
          if constexpr (!kStore) continue;
          const int64_t rest = n - j * VecF::size();
          if (kFull || rest >= VecF::size()) {
            lanes.v[j].store(y + done + j * VecF::size());
          } else if (rest > 0) {
            lanes.v[j].store(y + done + j * VecF::size(), rest);
          }
        }
      } else {  // double: computed in double, then narrowed to float element by element
        opmath_t exact[L::kWidth];
        float narrow[L::kWidth] = {};
        for (int j = 0; j < L::K; ++j) lanes.v[j].store(exact + j * L::Compute::size());
        for (int64_t i = 0; i < n; ++i) narrow[i] = static_cast<float>(exact[i]);
        for (int64_t i = 0; i < L::kWidth; i += VecF::size()) m = nan_max(m, VecF::loadu(narrow + i));
        if constexpr (kStore) std::copy(narrow, narrow + n, y + done);
      }
      since += n;
      if (since == amax_block) {
        *amaxes++ = reduce_nan_max(m);
        all = nan_max(all, m);
        m = VecF(0.0f);
        since = 0;
      }
    };
    for_each_block_of<L::kWidth>(count, block);
    return reduce_nan_max(nan_max(all, m));
  }
};

// The bits of the FP8 numbers nearest float32 lanes already saturated to the type's range
// (ties to even; NaN to the type's NaN), as c10's conversions compute them, but without
// branches: Fp8Encoding::encode (glu_math.h) on vectors. Below the least normal, a float add
// aligns the bits (the hardware rounds half to even). The fnuz types: one NaN (0x80), no
// negative zero.
C10_ALWAYS_INLINE VecI fp8_bits(const VecF& f, const Fp8Encoding& e) {
  const int shift = 23 - e.mantissa;
  const int32_t denorm_mask = (127 - e.bias + shift + 1) << 23;
  const int32_t least_normal = (127 - e.bias + 1) << 23;
  const auto rebias = static_cast<int32_t>(static_cast<uint32_t>(e.bias - 127) << 23);
  const int32_t round_up = rebias + (1 << (shift - 1)) - 1;  // odd mantissas add one more
#if defined(CPU_CAPABILITY_AVX512)
  // The same steps with AVX-512's mask registers: at::vec's compares return vectors, which
  // each blend turns back into a mask.
  const auto splat = [](int32_t i) { return _mm512_set1_epi32(i); };
  const __m128i count = _mm_cvtsi32_si128(shift);
  const __m512i all = _mm512_castps_si512(f);
  const __m512i sign = _mm512_and_si512(all, splat(static_cast<int32_t>(0x80000000u)));
  const __m512i b = _mm512_xor_si512(all, sign);
  const __m512 aligned =
      _mm512_add_ps(_mm512_castsi512_ps(b), _mm512_castsi512_ps(splat(denorm_mask)));
  const __m512i denormal = _mm512_sub_epi32(_mm512_castps_si512(aligned), splat(denorm_mask));
  const __m512i odd = _mm512_and_si512(_mm512_srl_epi32(b, count), splat(1));
  const __m512i normal =
      _mm512_srl_epi32(_mm512_add_epi32(_mm512_add_epi32(b, splat(round_up)), odd), count);
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(b, splat(0x7f800000));
  __m512i bits = _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(b, splat(least_normal)), normal,
                                         denormal);
  bits = _mm512_mask_blend_epi32(nan, bits, splat(0x7f));
  __m512i out = _mm512_or_si512(bits, _mm512_srli_epi32(sign, 24));
  if (e.fnuz) {
    out = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(bits, splat(0)), out, splat(0));
    out = _mm512_mask_blend_epi32(nan, out, splat(0x80));
  }
  return out;
#else
  const VecI all = at::vec::cast<int32_t>(f);
  const VecI sign = all & VecI(static_cast<int32_t>(0x80000000u));
  const VecI b = all ^ sign;
  const VecI denormal =
      at::vec::cast<int32_t>(at::vec::cast<float>(b) + at::vec::cast<float>(VecI(denorm_mask))) -
      VecI(denorm_mask);
  const VecI normal = (b + VecI(round_up) + ((b >> VecI(shift)) & VecI(1))) >> VecI(shift);
  const VecI nan = b > VecI(0x7f800000);
  VecI bits = VecI::blendv(normal, denormal, b < VecI(least_normal));
  bits = VecI::blendv(bits, VecI(0x7f), nan);
  VecI out = bits | (sign >> VecI(24));
  if (e.fnuz) {
    out = VecI::blendv(out, VecI(0), bits == VecI(0));
    out = VecI::blendv(out, VecI(0x80), nan);
  }
  return out;
#endif
}

// The low byte of each of the first k lanes, to out.
C10_ALWAYS_INLINE void store_low_bytes(const VecI& bits, uint8_t* out, int64_t k) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m128i bytes = _mm512_cvtepi32_epi8(bits);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i low = _mm256_and_si256(bits, _mm256_set1_epi32(0xff));
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(low),
                                         _mm256_extracti128_si256(low, 1));
  const __m128i bytes = _mm_packus_epi16(words, words);
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (k == VecI::size()) {
    std::memcpy(out, &bytes, VecI::size());
    return;
  }
  uint8_t lanes[16];
  std::memcpy(lanes, &bytes, sizeof lanes);
  std::copy(lanes, lanes + k, out);
#else
  int32_t lanes[VecI::size()];
  bits.store(lanes);
  for (int64_t j = 0; j < k; ++j) out[j] = static_cast<uint8_t>(lanes[j]);
#endif
}

// q = fp8(saturate(y * r)), as bytes.
void quantize(const float* y, int64_t n, const Fp8Rule& rule, const Fp8Encoding& encoding, float r,
              uint8_t* q) {
  const VecF top(rule.fp8_max), bottom(-rule.fp8_max), scale(r);
  for (int64_t i = 0; i < n; i += VecF::size()) {
    const int64_t k = std::min<int64_t>(n - i, VecF::size());
    VecF v = (k == VecF::size() ? VecF::loadu(y + i) : VecF::loadu(y + i, k)) * scale;
    v = at::vec::clamp_min(at::vec::clamp_max(v, top), bottom);  // a NaN v stays
    store_low_bytes(fp8_bits(v, encoding), q + i, k);
  }
}

// Blocks along the rows, a few at a time: their activations into a buffer with each
// block's amax, their scales, then their elements quantized from the buffer. Tasks own
// whole blocks.
template <typename Act>
void quantize_blocks(const Fp8Call& call, const Act& act) {
  const int64_t block = call.block;
  const int64_t per_run = call.in.run_len / block;
  // Several blocks to one call where each is whole vector blocks, so that every amax is its own.
  const int64_t group = block % Act::L::kWidth ? 1 : std::max<int64_t>(1, kFp8Chunk / block);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / block);
  auto* q = static_cast<uint8_t*>(call.q);
  const Fp8Encoding encoding = encoding_of(call.kind);
  at::parallel_for(0, call.in.numel() / block, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> y(block * std::min(group, end - begin));
    std::vector<float> amaxes(group);
    const Fp8Rule rule = call.rule;
    for (int64_t b = begin; b < end;) {
      const int64_t in_run = b % per_run;
      const int64_t n = std::min({group, end - b, per_run - in_run});
      if (!act.valid(b / per_run)) {  // a refused row: neither q nor scales written
        b += n;
        continue;
      }
      act(b / per_run, in_run * block, n * block, y.data(), block, amaxes.data());
      for (int64_t i = 0; i < n; ++i) {
        const float s = rule.scale(amaxes[i]);
        call.scales[b + i] = s;
        quantize(y.data() + i * block, block, rule, encoding, 1.0f / s, q + (b + i) * block);
      }
      b += n;
    }
  });
}

// body(start, y, n, amax) for every chunk of at most kFp8Chunk consecutive elements of a run,
// their activations in y (in `scratch` at their dense offset when it is set, else in a
// buffer of the task's); kStore false: not written anywhere, the amax alone. Tasks split
// the elements as the forward kernel's do.
template <bool kStore, typename Act, typename Body>
void for_each_chunk(const Fp8Call& call, const Act& act, float* scratch, const Body& body) {
  const int64_t len = call.in.run_len;
  at::parallel_for(0, call.in.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    float local[kFp8Chunk];
    for (int64_t at = begin; at < end;) {
      const int64_t run = at / len;
      const int64_t first = at % len;
      const int64_t n = std::min({len - first, end - at, kFp8Chunk});
      if (!act.valid(run)) {
        at += n;
        continue;
      }
      float* y = scratch != nullptr ? scratch + at : local;
      const float amax = act.template operator()<kStore>(run, first, n, y);
      body(at, y, n, amax);
      at += n;
    }
  });
}

// Up to this many elements, the per-tensor scale's first pass keeps the activations (4 bytes
// each) for the second to quantize; beyond, the second computes them again (the CPU's
// activation costs more than reading them back, but the buffer would grow with the tensor).
constexpr int64_t kFp8ScratchElements = int64_t(1) << 22;

// That buffer, kept by the calling thread from call to call (at most kFp8ScratchElements
// floats, 16 MiB): allocated afresh, each call paid its zeroing and first-touch page faults
// (swiglu, bfloat16 [1024, 8192]: 4.1 ms a call, against 3.1-3.3 ms reused and 4.4-4.7 ms
// for torch.compile's two passes).
float* tensor_scratch(int64_t numel) {
  thread_local std::unique_ptr<float[]> buffer;
  thread_local int64_t size = 0;
  if (size < numel) {
    buffer.reset();  // the old one freed before the new one is taken
    size = 0;
    buffer.reset(new float[numel]);
    size = numel;
  }
  return buffer.get();
}

// One scale for the tensor: the static one, or the amax of every activation first (a pass
// of its own; max is exact, so the split over threads cannot change it).
template <typename Act>
void quantize_tensor(const Fp8Call& call, const Act& act) {
  auto* q = static_cast<uint8_t*>(call.q);
  const Fp8Encoding encoding = encoding_of(call.kind);
  if (call.static_scale != nullptr) {
    const float s = *call.static_scale;
    call.scales[0] = s;
    const float r = 1.0f / s;
    for_each_chunk<true>(call, act, nullptr, [&](int64_t at, const float* y, int64_t n, float) {
      quantize(y, n, call.rule, encoding, r, q + at);
    });
    return;
  }
  const int64_t numel = call.in.numel();
  // Kept for a dense second pass: not where rows are refused, whose q stays unwritten.
  const bool keep = numel <= kFp8ScratchElements && call.rows.valid_rows == nullptr;
  float* scratch = keep ? tensor_scratch(numel) : nullptr;
  std::vector<float> partial(std::max<int>(1, at::get_num_threads()), 0.0f);
  const auto amax_of = [&](int64_t, const float*, int64_t, float chunk_amax) {
    float& m = partial[at::get_thread_num()];
    m = Fp8Rule::nan_max(m, chunk_amax);
  };
  if (scratch != nullptr) {
    for_each_chunk<true>(call, act, scratch, amax_of);
  } else {
    for_each_chunk<false>(call, act, nullptr, amax_of);
  }
  float amax = 0.0f;
  for (float m : partial) amax = Fp8Rule::nan_max(amax, m);
  const float s = call.rule.scale(amax);
  call.scales[0] = s;
  const float r = 1.0f / s;
  if (scratch != nullptr) {
    at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
      quantize(scratch + begin, end - begin, call.rule, encoding, r, q + begin);
    });
    return;
  }
  for_each_chunk<true>(call, act, nullptr, [&](int64_t at, const float* y, int64_t n, float) {
    quantize(y, n, call.rule, encoding, r, q + at);
  });
}

template <Activation A, typename scalar_t>
struct Fp8ForwardKernel {
  static void run(const Fp8Call& call) {
    with_flag(call.in.elem_stride == 2, [&](auto pairs) {
      using Act = Activations<A, scalar_t, decltype(pairs)::value>;
      const Act act{vector_params<scalar_t>(call.op), call.in,
                    static_cast<const scalar_t*>(call.gate),
                    static_cast<const scalar_t*>(call.value), call.round_to_input,
                    call.rows};
      if (call.block == 0) {
        quantize_tensor(call, act);
      } else {
        quantize_blocks(call, act);
      }
    });
  }
};

struct CpuTypes {
  using Half = c10::Half;
  using BFloat16 = c10::BFloat16;
};

}  // namespace

// This level's entry points (glu_cpu_levels.cpp chooses among the levels built).
namespace CPU_CAPABILITY {

void gated_forward_cpu(const ForwardCall& call) { dispatch<ForwardKernel, CpuTypes>(call); }

void gated_backward_cpu(const BackwardCall& call) {
  const RowOptions& rows = call.rows;
  if (rows.has_bias() || rows.valid_rows != nullptr || call.bias_grad_partials != nullptr) {
    return dispatch<BackwardRowsKernel, CpuTypes>(call);
  }
  dispatch<BackwardKernel, CpuTypes>(call);
}

void gated_forward_fp8_cpu(const Fp8Call& call) { dispatch<Fp8ForwardKernel, CpuTypes>(call); }

}  // namespace CPU_CAPABILITY
}  // namespace glu_fused
