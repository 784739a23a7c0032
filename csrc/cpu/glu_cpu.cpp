// The CPU kernels: one pass over memory, SIMD through ATen's Vectorized (the ISA chosen at
// build time, see build_config.py), parallel over cores with at::parallel_for.
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
#include <type_traits>

#include "../glu_dispatch.h"
#include "../glu_kernels.h"
#include "vec_math.h"

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
    with_flag(in.elem_stride == 2, [&](auto pairs) {
      constexpr bool kPairs = decltype(pairs)::value;
      constexpr int64_t kStride = kPairs ? 2 : 1;
      for_each_stretch(in, [&](int64_t run, int64_t first, int64_t count) {
        const auto p = params;
        const int64_t at = in.run_offset(run) + first * kStride;
        const scalar_t* g = gate + at;
        const scalar_t* v = value + at;
        scalar_t* y_out = out + run * in.run_len + first;
        auto block = [&](auto full, int64_t done, int64_t n) C10_ALWAYS_INLINE_ATTRIBUTE {
          constexpr bool kFull = decltype(full)::value;
          const int64_t shift = done * kStride;
          const auto x = P::template load<kFull, kPairs>(g + shift, v + shift, n);
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

struct CpuTypes {
  using Half = c10::Half;
  using BFloat16 = c10::BFloat16;
};

}  // namespace

void gated_forward_cpu(const ForwardCall& call) { dispatch<ForwardKernel, CpuTypes>(call); }

void gated_backward_cpu(const BackwardCall& call) { dispatch<BackwardKernel, CpuTypes>(call); }

}  // namespace glu_fused
