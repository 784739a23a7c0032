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

#include "../glu_kernels.h"
#include "vec_math.h"

namespace glu_fused {
namespace {

using at::vec::Vectorized;

// Vectorized<scalar_t>::size() consecutive elements of one tensor, held as K vectors of the
// compute type (float for half and bfloat16, else scalar_t itself).
template <typename scalar_t>
struct Lanes {
  using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Compute = Vectorized<opmath_t>;
  using Storage = Vectorized<scalar_t>;
  static constexpr int64_t kWidth = Storage::size();
  static constexpr int K = kWidth / Compute::size();
  static constexpr bool kReduced = !std::is_same_v<scalar_t, opmath_t>;

  Compute v[K];

  // Loads `count` (at most kWidth) elements; the lanes past them are zero.
  static Lanes load(const scalar_t* p, int64_t count) {
    Lanes out;
    if (count <= 0) {
      for (int j = 0; j < K; ++j) out.v[j] = Compute(opmath_t(0));
      return out;
    }
    const Storage raw = count == kWidth ? Storage::loadu(p) : Storage::loadu(p, count);
    if constexpr (kReduced) {
      std::tie(out.v[0], out.v[1]) = at::vec::convert_to_float<scalar_t>(raw);
    } else {
      out.v[0] = raw;
    }
    return out;
  }

  void store(scalar_t* p, int64_t count) const {
    if (count <= 0) return;
    Storage raw;
    if constexpr (kReduced) {
      raw = at::vec::convert_from_float<scalar_t>(v[0], v[1]);
    } else {
      raw = v[0];
    }
    if (count == kWidth) {
      raw.store(p);
    } else {
      raw.store(p, count);
    }
  }
};

// The gates and values of up to kWidth consecutive output elements of one run.
template <typename scalar_t>
struct PairLanes {
  using L = Lanes<scalar_t>;
  L gate;
  L value;

  // elem_stride 1: two separate stretches. elem_stride 2: one stretch of interleaved pairs,
  // split with deinterleave2; `gate_first` says whether gates sit at the even positions.
  static PairLanes load(const scalar_t* g, const scalar_t* v, int64_t count, bool pairs) {
    PairLanes out;
    if (!pairs) {
      out.gate = L::load(g, count);
      out.value = L::load(v, count);
      return out;
    }
    const bool gate_first = g < v;
    const scalar_t* base = gate_first ? g : v;
    const L lo = L::load(base, std::min<int64_t>(2 * count, L::kWidth));
    const L hi = L::load(base + L::kWidth, 2 * count - L::kWidth);
    L& first = gate_first ? out.gate : out.value;
    L& second = gate_first ? out.value : out.gate;
    deinterleave(lo, hi, first, second);
    return out;
  }

  // Splits 2 * kWidth interleaved elements (lo, hi) into evens and odds.
  static void deinterleave(const L& lo, const L& hi, L& evens, L& odds) {
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
  void store(scalar_t* g, scalar_t* v, int64_t count, bool pairs) const {
    if (!pairs) {
      gate.store(g, count);
      value.store(v, count);
      return;
    }
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
    lo.store(base, std::min<int64_t>(2 * count, L::kWidth));
    hi.store(base + L::kWidth, 2 * count - L::kWidth);
  }
};

// Elements per parallel task, as ATen's elementwise kernels use.
constexpr int64_t kGrainElements = 32768;

// Calls body(run, first_elem, count) for every block of up to `width` elements of every
// run, spread over the cores. Blocks never straddle runs.
template <typename Body>
void for_each_block(const PairLayout& layout, int64_t width, const Body& body) {
  const int64_t blocks_per_run = (layout.run_len + width - 1) / width;
  const int64_t blocks = layout.runs * blocks_per_run;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / width);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t run = b / blocks_per_run;
      const int64_t first = (b % blocks_per_run) * width;
      body(run, first, std::min(width, layout.run_len - first));
    }
  });
}

template <typename scalar_t>
ActParams<typename Lanes<scalar_t>::Compute> vector_params(const ActivationCall& op) {
  using C = typename Lanes<scalar_t>::Compute;
  using opmath_t = typename Lanes<scalar_t>::opmath_t;
  return {C(static_cast<opmath_t>(op.alpha)), C(static_cast<opmath_t>(op.limit))};
}

template <Activation A, typename scalar_t>
struct ForwardKernel {
  static void run(const ForwardCall& call) {
  using L = Lanes<scalar_t>;
  using Math = Gated<A, typename L::Compute>;
  const auto params = vector_params<scalar_t>(call.op);
  const PairLayout& in = call.in;
  const bool pairs = in.elem_stride == 2;
  const auto* gate = static_cast<const scalar_t*>(call.gate);
  const auto* value = static_cast<const scalar_t*>(call.value);
  auto* out = static_cast<scalar_t*>(call.out);
  for_each_block(in, L::kWidth, [&](int64_t run, int64_t first, int64_t count) {
    const int64_t at = in.run_offset(run) + first * in.elem_stride;
    const auto x = PairLanes<scalar_t>::load(gate + at, value + at, count, pairs);
    L y;
    for (int j = 0; j < L::K; ++j) y.v[j] = Math::forward(x.gate.v[j], x.value.v[j], params);
    y.store(out + run * in.run_len + first, count);
  });
  }
};

template <Activation A, typename scalar_t>
struct BackwardKernel {
  static void run(const BackwardCall& call) {
  using L = Lanes<scalar_t>;
  using Math = Gated<A, typename L::Compute>;
  const auto params = vector_params<scalar_t>(call.op);
  const PairLayout& in = call.in;
  const PairLayout& gin = call.grad_in;
  const bool pairs = in.elem_stride == 2;
  const auto* gate = static_cast<const scalar_t*>(call.gate);
  const auto* value = static_cast<const scalar_t*>(call.value);
  const auto* grad_out = static_cast<const scalar_t*>(call.grad_out);
  auto* grad_gate = static_cast<scalar_t*>(call.grad_gate);
  auto* grad_value = static_cast<scalar_t*>(call.grad_value);
  for_each_block(in, L::kWidth, [&](int64_t run, int64_t first, int64_t count) {
    const int64_t at = in.run_offset(run) + first * in.elem_stride;
    const auto x = PairLanes<scalar_t>::load(gate + at, value + at, count, pairs);
    const L dy = L::load(grad_out + run * in.run_len + first, count);
    PairLanes<scalar_t> dx;
    for (int j = 0; j < L::K; ++j) {
      Math::backward(x.gate.v[j], x.value.v[j], dy.v[j], params, dx.gate.v[j], dx.value.v[j]);
    }
    const int64_t gat = gin.run_offset(run) + first * gin.elem_stride;
    dx.store(grad_gate + gat, grad_value + gat, count, pairs);
  });
  }
};

// Runs Kernel<activation, scalar_t>::run(call) for the call's activation and dtype.
template <template <Activation, typename> class Kernel, Activation A, typename Call>
void dispatch_dtype(const Call& call) {
  switch (call.op.dtype) {
    case ScalarKind::Half: return Kernel<A, c10::Half>::run(call);
    case ScalarKind::BFloat16: return Kernel<A, c10::BFloat16>::run(call);
    case ScalarKind::Float: return Kernel<A, float>::run(call);
    case ScalarKind::Double: return Kernel<A, double>::run(call);
  }
  TORCH_CHECK(false, "glu_fused: unsupported dtype");
}

template <template <Activation, typename> class Kernel, typename Call>
void dispatch(const Call& call) {
  switch (call.op.activation) {
    case Activation::Sigmoid: return dispatch_dtype<Kernel, Activation::Sigmoid>(call);
    case Activation::Silu: return dispatch_dtype<Kernel, Activation::Silu>(call);
    case Activation::Gelu: return dispatch_dtype<Kernel, Activation::Gelu>(call);
    case Activation::GeluTanh: return dispatch_dtype<Kernel, Activation::GeluTanh>(call);
    case Activation::Relu: return dispatch_dtype<Kernel, Activation::Relu>(call);
    case Activation::ClampedSilu: return dispatch_dtype<Kernel, Activation::ClampedSilu>(call);
  }
  TORCH_CHECK(false, "glu_fused: unknown activation");
}

}  // namespace

void gated_forward_cpu(const ForwardCall& call) { dispatch<ForwardKernel>(call); }

void gated_backward_cpu(const BackwardCall& call) { dispatch<BackwardKernel>(call); }

}  // namespace glu_fused
