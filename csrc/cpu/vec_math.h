// MathOps for ATen's SIMD vectors, so that the formulas of glu_math.h run lane-wise on the
// CPU. Comparisons give all-ones lanes where true; blendv picks its second operand there.
// The ordered comparisons are false for NaN, as the scalar `a < b` is.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <iterator>
#include <type_traits>

#include "../glu_math.h"

namespace glu_fused {

template <typename scalar_t>
struct VecMathOps {
  using V = at::vec::Vectorized<scalar_t>;
  C10_ALWAYS_INLINE static at::vec::Vectorized<float> erfcc_half_square(
      const at::vec::Vectorized<float>& x);
  // Out of line: the rare lanes' path stays out of the common loop's code.
  C10_NOINLINE static at::vec::Vectorized<float> erfcc_half_square_tail(
      const at::vec::Vectorized<float>& x);
  // float: ATen's inline exp_u20 (20 ulp, 1.2e-6 relative, well inside the 1e-5 float32
  // tolerance; 0 below ln(FLT_MIN)), twice as fast as Sleef's. It turns NaN into 0, so NaN
  // lanes are put back. double: Sleef's 1-ulp exp.
  GLU_HD static V exp(const V& x) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return V::blendv(x.exp_u20(), x, x.isnan());
    } else {
      return x.exp();
    }
  }
  GLU_HD static V abs(const V& x) { return x.abs(); }
  // erfc(x / sqrt 2) for x >= 0. float: below x = 4, exp(-x^2 / 2) times a polynomial; from
  // 4 on, Numerical Recipes' erfcc of z = x / sqrt 2, t exp(-z^2 + P(t)) with
  // t = 1 / (1 + z/2) (1.2e-7 relative everywhere, as the Triton kernels' float32 erfc); both
  // a fraction of Sleef's cost. double: Sleef's.
  GLU_HD static V erfc_half_square(const V& x) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return erfcc_half_square(x);
    } else {
      return (x * V(0.70710678118654752440)).erfc();
    }
  }
  GLU_HD static V tanh(const V& x) { return x.tanh(); }
  GLU_HD static V select_lt(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a < b);
  }
  GLU_HD static V select_gt(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a > b);
  }
  GLU_HD static V select_eq(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a == b);
  }
};

template <>
struct MathOps<at::vec::Vectorized<float>> : VecMathOps<float> {};
template <>
struct MathOps<at::vec::Vectorized<double>> : VecMathOps<double> {};

// The coefficients of P, highest power first.
inline constexpr float kErfccP[] = {0.17087277f,  -0.82215223f, 1.48851587f, -1.13520398f,
                                    0.27886807f,  -0.18628806f, 0.09678418f, 0.37409196f,
                                    1.00002368f, -1.26551223f};

// erfc(z) = t exp(-z^2 + P(t)), z = x / sqrt 2. The exponent reaches -100 and more, where a
// float's rounding alone (half an ulp of 64: 4e-6) would cost 4e-6 of relative accuracy, more
// than the approximation's 1.2e-7: so it is carried as hi + lo (z^2 = x^2 / 2 exact by an FMA
// and a halving, the sums by TwoSum), exp is taken of hi, and lo enters as the factor 1 + lo.
//
// exp_u20 flushes below ln(FLT_MIN) to 0, but erfc stays a (subnormal) float up to x = 10.04,
// where a huge value times the GELU of a gate near -14 still needs it: exp(hi) is taken as
// exp(hi + 32 ln 2) * 2^-32, which rounds into the subnormals once, at the multiplication.
inline constexpr float kExpShift = 22.18070977791825f;         // 32 ln 2
inline constexpr float kExpUnshift = 2.3283064365386963e-10f;  // 2^-32

// Below x = 4 (all but 6e-5 of a unit normal's draws), erfc(x / sqrt 2) = exp(-x^2 / 2) Q(x),
// with Q a degree-12 polynomial in s = x / 2 - 1 fitted to erfcx(x / sqrt 2) for the least
// relative error: 2.1e-7 as float32 evaluates it, below exp_u20's 1.2e-6, and the exponent's
// rounding costs at most 4.8e-7 there. No division and a third of the tail form's work. The
// coefficients, highest power first.
inline constexpr float kCentralEnd = 4.0f;
inline constexpr float kErfcxCentral[] = {
    0.00029350515f, -0.0007677215f, 0.0008682206f, -0.0017025019f, 0.004636299f,
    -0.009740625f,  0.018678062f,   -0.035147466f, 0.06322813f,    -0.10727822f,
    0.17050241f,    -0.25095278f,   0.336204f};

// The polynomial with coefficients c (highest power first, an even degree) at s, as
// even(s^2) + s odd(s^2): two Horner chains of half the length, which the core overlaps, in
// few registers (Estrin's scheme, as deep, spills them).
template <typename V, size_t N>
V two_chain_horner(const float (&c)[N], const V& s) {
  static_assert(N % 2 == 1, "an even degree: c[0], c[2], ... are the even powers");
  const V s2 = s * s;
  V even(c[0]);
  V odd(c[1]);
  for (size_t i = 2; i + 1 < N; i += 2) {
    even = at::vec::fmadd(even, s2, V(c[i]));
    odd = at::vec::fmadd(odd, s2, V(c[i + 1]));
  }
  even = at::vec::fmadd(even, s2, V(c[N - 1]));
  return at::vec::fmadd(odd, s, even);
}

// Its lanes are used only where x is below kCentralEnd: finite, so exp_u20 needs no NaN guard.
C10_ALWAYS_INLINE at::vec::Vectorized<float> erfc_half_square_central(
    const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V s = at::vec::fmsub(x, V(0.5f), V(1.0f));
  return (x * x * V(-0.5f)).exp_u20() * two_chain_horner(kErfcxCentral, s);
}

// The central form where every lane is below kCentralEnd (nearly always), else each lane's
// own form: a lane's result depends on its value alone, never on its neighbours'.
template <typename scalar_t>
C10_ALWAYS_INLINE at::vec::Vectorized<float> VecMathOps<scalar_t>::erfcc_half_square(
    const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V central = erfc_half_square_central(x);
  const V inside = x < V(kCentralEnd);  // false for NaN
  if (inside.zero_mask() == 0) return central;
  return V::blendv(erfcc_half_square_tail(x), central, inside);
}

template <typename scalar_t>
at::vec::Vectorized<float> VecMathOps<scalar_t>::erfcc_half_square_tail(
    const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V t = V(1.0f) / at::vec::fmadd(x, V(0.35355339059327376f), V(1.0f));  // 1 / (1 + z/2)
  V p(kErfccP[0]);
  for (int i = 1; i < static_cast<int>(std::size(kErfccP)); ++i) {
    p = at::vec::fmadd(p, t, V(kErfccP[i]));
  }
  const V x_square = x * x;
  const V square = x_square * V(0.5f);  // z^2 = square + square_lo, exactly
  const V square_lo = at::vec::fmsub(x, x, x_square) * V(0.5f);
  // hi + lo = (p + shift) - square, each sum with its rounding error kept (TwoSum).
  const V a = p + V(kExpShift);
  const V a_lo = p - (a - V(kExpShift));  // |shift| > |p|: Fast2Sum
  const V hi = a - square;
  const V b = hi - a;
  const V lo = ((a - (hi - b)) - (square + b)) + (a_lo - square_lo);
  const V scaled = VecMathOps<float>::exp(hi);
  const V result = t * (at::vec::fmadd(scaled, lo, scaled) * V(kExpUnshift));
  // Past z = 10.1 erfc is below the least float, and x^2 may be inf (inf - inf in lo): 0. NaN
  // fails the comparison and stays.
  return V::blendv(result, V(0.0f), x > V(14.28f));
}

}  // namespace glu_fused
