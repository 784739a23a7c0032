// The element math of every activation and its derivative: the one home of the numerics
// that the CPU kernels and the CUDA kernels both run.
//
// Everything is written once against `T`, the compute type, and a primitive table
// `MathOps<T>`. This header provides the scalar tables (float, double), usable on host and
// device; csrc/cpu/vec_math.h adds tables for ATen's `Vectorized<float>` and
// `Vectorized<double>`, so the CPU's SIMD loops evaluate exactly these formulas.
//
// Numerical rules (see SPEC.md, "Numerics"):
//   * stable forms only: sigmoid(x) = 1 / (1 + exp(-x)) saturates to 0 or 1, never NaN;
//     products that can meet 0 * inf for large |x| are replaced by selects;
//   * NaN propagates: comparisons are written so that a NaN input takes the branch that
//     returns it (clamp and relu keep NaN, as torch.clamp and torch.relu do);
//   * derivatives of clamp and relu are masks (selects), as in PyTorch's autograd, so an
//     upstream inf is not turned into NaN by a multiplication with zero.
// Only CUDA headers and the standard library may be included here: nvcc compiles it alone.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GLU_HD __host__ __device__ __forceinline__
#else
#define GLU_HD inline
#endif

namespace glu_fused {

// The gate's activation; gated(gate, value) computes act(gate) * value.
enum class Activation : int {
  Sigmoid = 0,      // glu: value * sigmoid(gate)
  Silu = 1,         // swiglu
  Gelu = 2,         // geglu, erf form
  GeluTanh = 3,     // geglu, tanh approximation
  Relu = 4,         // reglu
  ClampedSilu = 5,  // gpt-oss: clamp(gate, max=limit) * sigmoid(alpha * .) * (clamp(value) + 1)
};

// Parameters of ClampedSilu; ignored by the other activations.
template <typename T>
struct ActParams {
  T alpha;
  T limit;
};

// Primitive operations. `select_*(a, b, x, y)` is `a OP b ? x : y` elementwise.
template <typename T>
struct MathOps;

template <>
struct MathOps<float> {
  GLU_HD static float exp(float x) { return ::expf(x); }
  GLU_HD static float erf(float x) { return ::erff(x); }
  GLU_HD static float tanh(float x) { return ::tanhf(x); }
  GLU_HD static float select_lt(float a, float b, float x, float y) { return a < b ? x : y; }
  GLU_HD static float select_gt(float a, float b, float x, float y) { return a > b ? x : y; }
  GLU_HD static float select_le(float a, float b, float x, float y) { return a <= b ? x : y; }
  GLU_HD static float select_eq(float a, float b, float x, float y) { return a == b ? x : y; }
};

template <>
struct MathOps<double> {
  GLU_HD static double exp(double x) { return ::exp(x); }
  GLU_HD static double erf(double x) { return ::erf(x); }
  GLU_HD static double tanh(double x) { return ::tanh(x); }
  GLU_HD static double select_lt(double a, double b, double x, double y) { return a < b ? x : y; }
  GLU_HD static double select_gt(double a, double b, double x, double y) { return a > b ? x : y; }
  GLU_HD static double select_le(double a, double b, double x, double y) { return a <= b ? x : y; }
  GLU_HD static double select_eq(double a, double b, double x, double y) { return a == b ? x : y; }
};

namespace detail {

// 1 / sqrt(2), 1 / sqrt(2 * pi), sqrt(2 / pi) and the cubic coefficient of tanh-GELU.
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

template <typename T>
GLU_HD T sigmoid(T x) {
  using M = MathOps<T>;
  return T(1) / (T(1) + M::exp(T(0) - x));
}

// clamp(x, max=hi) that keeps NaN: NaN > hi is false.
template <typename T>
GLU_HD T clamp_max(T x, T hi) {
  return MathOps<T>::select_gt(x, hi, hi, x);
}

// clamp(x, lo, hi) that keeps NaN.
template <typename T>
GLU_HD T clamp(T x, T lo, T hi) {
  using M = MathOps<T>;
  return M::select_lt(x, lo, lo, clamp_max(x, hi));
}

// Mask of clamp's derivative: upstream where lo <= x <= hi, else 0 (NaN gives 0, as autograd).
template <typename T>
GLU_HD T pass_if_within(T x, T lo, T hi, T upstream) {
  using M = MathOps<T>;
  return M::select_lt(x, lo, T(0), M::select_le(x, hi, upstream, T(0)));
}

}  // namespace detail

// act(gate) * value and its vector-Jacobian product, one struct per activation.
// backward() returns d/dgate and d/dvalue of the product for an upstream gradient `dy`.
template <Activation A, typename T>
struct Gated;

template <typename T>
struct Gated<Activation::Sigmoid, T> {
  GLU_HD static T forward(T g, T v, const ActParams<T>&) { return v * detail::sigmoid(g); }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    const T s = detail::sigmoid(g);
    dv = dy * s;
    dg = (dy * v) * (s * (T(1) - s));
  }
};

template <typename T>
struct Gated<Activation::Silu, T> {
  GLU_HD static T forward(T g, T v, const ActParams<T>&) { return (g * detail::sigmoid(g)) * v; }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    const T s = detail::sigmoid(g);
    dv = dy * (g * s);
    dg = (dy * v) * (s * (T(1) + g * (T(1) - s)));
  }
};

template <typename T>
struct Gated<Activation::Gelu, T> {
  GLU_HD static T cdf(T g) {
    return T(0.5) * (T(1) + MathOps<T>::erf(g * T(detail::kInvSqrt2)));
  }
  GLU_HD static T forward(T g, T v, const ActParams<T>&) { return (g * cdf(g)) * v; }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    const T c = cdf(g);
    // exp(-g^2 / 2) reaches 0 before g * it could overflow, so no select is needed here.
    const T pdf = MathOps<T>::exp(T(-0.5) * g * g) * T(detail::kInvSqrt2Pi);
    dv = dy * (g * c);
    dg = (dy * v) * (c + g * pdf);
  }
};

template <typename T>
struct Gated<Activation::GeluTanh, T> {
  GLU_HD static T tanh_inner(T g) {
    return MathOps<T>::tanh(T(detail::kSqrt2OverPi) * (g + T(detail::kGeluCubic) * g * g * g));
  }
  GLU_HD static T forward(T g, T v, const ActParams<T>&) {
    return (T(0.5) * g * (T(1) + tanh_inner(g))) * v;
  }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    using M = MathOps<T>;
    const T t = tanh_inner(g);
    const T sech2 = T(1) - t * t;
    const T inner_slope = T(detail::kSqrt2OverPi) * (T(1) + T(3 * detail::kGeluCubic) * g * g);
    // Once tanh saturates, sech2 is exactly 0 while inner_slope may be inf: 0 * inf is NaN.
    const T tail = M::select_eq(sech2, T(0), T(0), T(0.5) * g * sech2 * inner_slope);
    dv = dy * (T(0.5) * g * (T(1) + t));
    dg = (dy * v) * (T(0.5) * (T(1) + t) + tail);
  }
};

template <typename T>
struct Gated<Activation::Relu, T> {
  GLU_HD static T relu(T g) { return MathOps<T>::select_lt(g, T(0), T(0), g); }
  GLU_HD static T forward(T g, T v, const ActParams<T>&) { return relu(g) * v; }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    dv = dy * relu(g);
    dg = MathOps<T>::select_gt(g, T(0), dy * v, T(0));
  }
};

template <typename T>
struct Gated<Activation::ClampedSilu, T> {
  GLU_HD static T forward(T g, T v, const ActParams<T>& p) {
    const T gc = detail::clamp_max(g, p.limit);
    const T vc = detail::clamp(v, T(0) - p.limit, p.limit);
    return (gc * detail::sigmoid(p.alpha * gc)) * (vc + T(1));
  }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>& p, T& dg, T& dv) {
    using M = MathOps<T>;
    const T gc = detail::clamp_max(g, p.limit);
    const T vc = detail::clamp(v, T(0) - p.limit, p.limit);
    const T s = detail::sigmoid(p.alpha * gc);
    dv = detail::pass_if_within(v, T(0) - p.limit, p.limit, dy * (gc * s));
    const T dgc = (dy * (vc + T(1))) * (s + p.alpha * gc * s * (T(1) - s));
    dg = M::select_le(g, p.limit, dgc, T(0));
  }
};

}  // namespace glu_fused
