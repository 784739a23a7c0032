// MathOps for ATen's SIMD vectors, so that the formulas of glu_math.h run lane-wise on the
// CPU. Comparisons give all-ones lanes where true; blendv picks its second operand there.
// The ordered comparisons are false for NaN, as the scalar `a < b` is.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "../glu_math.h"

namespace glu_fused {

template <typename scalar_t>
struct VecMathOps {
  using V = at::vec::Vectorized<scalar_t>;
  static V exp(const V& x) { return x.exp(); }
  static V abs(const V& x) { return x.abs(); }
  static V erfc(const V& x) { return x.erfc(); }
  static V tanh(const V& x) { return x.tanh(); }
  static V select_lt(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a < b);
  }
  static V select_gt(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a > b);
  }
  static V select_eq(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a == b);
  }
};

template <>
struct MathOps<at::vec::Vectorized<float>> : VecMathOps<float> {};
template <>
struct MathOps<at::vec::Vectorized<double>> : VecMathOps<double> {};

}  // namespace glu_fused
