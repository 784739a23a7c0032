// MathOps for ATen's SIMD vectors, so that the formulas of glu_math.h run lane-wise on the
// CPU. Comparisons give all-ones lanes where true; blendv picks its second operand there.
// The ordered comparisons are false for NaN, as the scalar `a < b` is.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../glu_math.h"

namespace glu_fused {

template <typename scalar_t>
struct VecMathOps {
  using V = at::vec::Vectorized<scalar_t>;
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
  GLU_HD static V erfc(const V& x) { return x.erfc(); }
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

}  // namespace glu_fused
