// The element math of every activation and its derivative: the one home of the numerics
// that the CPU kernels and the CUDA kernels both run.
//
// Everything is written once against `T`, the compute type, and a primitive table
// `MathOps<T>`. This header provides the scalar tables (float, double), usable on host and
// device; csrc/cpu/vec_math.h adds tables for ATen's `Vectorized<float>` and
// `Vectorized<double>`, so the CPU's SIMD loops evaluate exactly these formulas.
//
// Numerical rules (docs/contract.md, "Numerics"):
//   * stable forms only: sigmoid and the GELUs never overflow and keep their relative
//     accuracy for negative inputs (a tiny act(gate) may be multiplied by a huge value);
//     products that can meet 0 * inf for large |x| are replaced by selects;
//   * NaN propagates: comparisons are written so that a NaN input takes the branch that
//     returns it (clamp and relu keep NaN, as torch.clamp and torch.relu do);
//   * derivatives of clamp and relu are masks (selects), as in PyTorch's autograd, so an
//     upstream inf is not turned into NaN by a multiplication with zero; at a clamp bound
//     the gradient is 0, at relu's kink too.
// Only CUDA headers and the standard library may be included here: nvcc compiles it alone.
#pragma once

#include <cmath>
#include <cstring>

// Always inlined: on the CPU these run on SIMD vectors, and a call boundary would send
// every vector through memory.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define GLU_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define GLU_HD inline __attribute__((always_inline))
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
  GLU_HD static float abs(float x) { return ::fabsf(x); }
  // erfc(x / sqrt 2) for x >= 0: GELU's tail, from the gate itself (see Gated<Gelu>).
  GLU_HD static float erfc_half_square(float x) {
    return ::erfcf(x * static_cast<float>(0.70710678118654752440));
  }
  GLU_HD static float tanh(float x) { return ::tanhf(x); }
  GLU_HD static float select_lt(float a, float b, float x, float y) { return a < b ? x : y; }
  GLU_HD static float select_gt(float a, float b, float x, float y) { return a > b ? x : y; }
  GLU_HD static float select_eq(float a, float b, float x, float y) { return a == b ? x : y; }
};

template <>
struct MathOps<double> {
  GLU_HD static double exp(double x) { return ::exp(x); }
  GLU_HD static double abs(double x) { return ::fabs(x); }
  GLU_HD static double erfc_half_square(double x) { return ::erfc(x * 0.70710678118654752440); }
  GLU_HD static double tanh(double x) { return ::tanh(x); }
  GLU_HD static double select_lt(double a, double b, double x, double y) { return a < b ? x : y; }
  GLU_HD static double select_gt(double a, double b, double x, double y) { return a > b ? x : y; }
  GLU_HD static double select_eq(double a, double b, double x, double y) { return a == b ? x : y; }
};

namespace detail {

// 1 / sqrt(2), 1 / sqrt(2 * pi), sqrt(2 / pi) and the cubic coefficient of tanh-GELU.
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

// sigmoid(x) and 1 - sigmoid(x) = sigmoid(-x), each computed without cancellation:
// 1 / (1 + e) and e / (1 + e) with e = exp(-|x|), which never overflows. Tiny values keep
// their relative accuracy (a huge factor may multiply them), and so does the slope
// s * (1 - s) = e / (1 + e)^2 on both sides.
template <typename T>
struct Sigmoid {
  T s;
  T one_minus_s;

  GLU_HD explicit Sigmoid(T x) {
    using M = MathOps<T>;
    const T e = M::exp(T(0) - M::abs(x));
    const T big = T(1) / (T(1) + e);
    const T small = e * big;
    s = M::select_lt(x, T(0), small, big);
    one_minus_s = M::select_lt(x, T(0), big, small);
  }

  GLU_HD T slope() const { return s * one_minus_s; }
};

template <typename T>
GLU_HD T sigmoid(T x) {
  return Sigmoid<T>(x).s;
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

// Mask of clamp's derivative: upstream strictly inside (lo, hi), else 0 (NaN gives 0), as
// PyTorch's autograd of clamp.
template <typename T>
GLU_HD T pass_if_inside(T x, T lo, T hi, T upstream) {
  using M = MathOps<T>;
  return M::select_gt(x, lo, M::select_lt(x, hi, upstream, T(0)), T(0));
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
    const detail::Sigmoid<T> sg(g);
    dv = dy * sg.s;
    dg = (dy * v) * sg.slope();
  }
};

template <typename T>
struct Gated<Activation::Silu, T> {
  GLU_HD static T forward(T g, T v, const ActParams<T>&) { return (g * detail::sigmoid(g)) * v; }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    const detail::Sigmoid<T> sg(g);
    dv = dy * (g * sg.s);
    dg = (dy * v) * (sg.s * (T(1) + g * sg.one_minus_s));
  }
};

template <typename T>
struct Gated<Activation::Gelu, T> {
  // Phi(g) = erfc(-g / sqrt 2) / 2, from one erfc of |g| / sqrt 2, which never cancels:
  // e = erfc(|g| / sqrt 2) / 2 is Phi(g) for g < 0, the tail where 1 + erf(.) would cancel,
  // and 1 - e for g >= 0, where e <= 1/2 leaves at least half of 1. erfc_half_square takes
  // |g| itself: the CPU's vectors square it exactly, where rounding |g| / sqrt 2 first would
  // cost 2 (g^2 / 2) times its rounding error (8e-6 near g = -11), and use one exp and one
  // rational function for it.
  GLU_HD static T cdf(T g) {
    using M = MathOps<T>;
    const T e = T(0.5) * M::erfc_half_square(M::abs(g));
    return M::select_lt(g, T(0), e, T(1) - e);
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

// 0.5 * (1 + tanh(u)) is evaluated as sigmoid(2u): the same function, without the
// cancellation of 1 + tanh(u) where tanh(u) rounds to -1 (u < -8.3 in float32), which would
// turn the small but non-zero results of negative gates into 0.
template <typename T>
struct Gated<Activation::GeluTanh, T> {
  GLU_HD static T inner(T g) {
    return T(detail::kSqrt2OverPi) * (g + T(detail::kGeluCubic) * g * g * g);
  }
  GLU_HD static T forward(T g, T v, const ActParams<T>&) {
    return (g * detail::sigmoid(T(2) * inner(g))) * v;
  }
  GLU_HD static void backward(T g, T v, T dy, const ActParams<T>&, T& dg, T& dv) {
    using M = MathOps<T>;
    const detail::Sigmoid<T> sg(T(2) * inner(g));
    const T s = sg.s;                        // 0.5 * (1 + tanh(u))
    const T half_sech2 = T(2) * sg.slope();  // 0.5 * (1 - tanh(u)^2)
    const T inner_slope = T(detail::kSqrt2OverPi) * (T(1) + T(3 * detail::kGeluCubic) * g * g);
    // Once the sigmoid saturates, half_sech2 is exactly 0 while inner_slope may be inf.
    const T tail = M::select_eq(half_sech2, T(0), T(0), g * half_sech2 * inner_slope);
    dv = dy * (g * s);
    dg = (dy * v) * (s + tail);
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
    const detail::Sigmoid<T> sg(p.alpha * gc);
    dv = detail::pass_if_inside(v, T(0) - p.limit, p.limit, dy * (gc * sg.s));
    // gc * slope before alpha: alpha * gc alone may overflow where slope is 0.
    const T dgc = (dy * (vc + T(1))) * (sg.s + p.alpha * (gc * sg.slope()));
    dg = M::select_lt(g, p.limit, dgc, T(0));
  }
};

// ---- FP8 output: the scale of a block and the saturation (docs/contract.md, "FP8 output";
// glu_fused/_fp8.py writes the same rule in PyTorch, and the tests hold them bit for bit) ----

enum class ScaleRule : int {
  Float = 0,      // s = max(amax, eps) / fp8_max, IEEE division
  Pow2Ceil = 1,   // the power of two at or above that
  Pow2Floor = 2,  // 2^(floor(log2 max(amax, eps)) - emax): the OCP MX rule
};

struct Fp8Rule {
  float fp8_max;  // the FP8 type's largest finite value
  int emax;       // the exponent of its largest power of two
  float eps;      // checked: eps / fp8_max is a normal float32
  ScaleRule rule;

  // The largest of m and |a|, where a NaN (in either) wins, as torch.amax propagates it.
  GLU_HD static float nan_max(float m, float a) {
    const float b = ::fabsf(a);  // as torch.abs: a NaN's sign cleared too
    return (b > m || b != b) ? b : m;
  }

  // A block's dequantization scale from its amax.
  GLU_HD float scale(float amax) const {
    const float m = (amax != amax || amax > eps) ? amax : eps;
    if (rule == ScaleRule::Pow2Floor) return pow2(m, false);
    const float s = m / fp8_max;
    return rule == ScaleRule::Pow2Ceil ? pow2(s, true) : s;
  }

  // y * r saturated to +-fp8_max; NaN stays NaN (both comparisons are false for it).
  GLU_HD float saturate(float v) const {
    return v > fp8_max ? fp8_max : (v < -fp8_max ? -fp8_max : v);
  }

 private:
  // x positive and normal (eps sees to it), NaN or inf: the power of two at or above x
  // (ceil), or 2^(floor(log2 x) - emax); NaN and inf kept. Exact, on bits.
  GLU_HD float pow2(float x, bool ceil) const {
    unsigned bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7f800000u) == 0x7f800000u) return x;
    const int exponent = static_cast<int>(bits >> 23) - 127;  // x > 0: no sign bit
    const int e = ceil ? exponent + ((bits & 0x7fffffu) != 0) : exponent - emax;
    bits = static_cast<unsigned>(e + 127) << 23;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
  }
};

// The bits of an FP8 number from a float32 already saturated to the format's range: the
// nearest, ties to even, as torch's conversions give them (c10/util/Float8_*.h). Scalar, for
// the CUDA kernels (the CPU's vector twin is fp8_bits in csrc/cpu/glu_cpu.cpp; the tests hold
// both to torch's bits). The "fnuz" formats (ROCm's) have their bias one higher, one NaN
// (0x80) and no negative zero.
struct Fp8Encoding {
  int mantissa;  // 3 (E4M3) or 2 (E5M2)
  int bias;      // 7, 15; 8, 16 for fnuz
  bool fnuz;

  GLU_HD unsigned char encode(float v) const {
    unsigned bits;
    memcpy(&bits, &v, sizeof bits);
    const unsigned sign = bits & 0x80000000u;
    const unsigned b = bits ^ sign;
    if (b > 0x7f800000u) return fnuz ? 0x80 : static_cast<unsigned char>(0x7f | (sign >> 24));
    const unsigned magnitude = b < least_normal() ? subnormal(b) : normal(b);
    if (fnuz && magnitude == 0) return 0;
    return static_cast<unsigned char>(magnitude | (sign >> 24));
  }

 private:
  GLU_HD int shift() const { return 23 - mantissa; }
  GLU_HD unsigned least_normal() const { return static_cast<unsigned>(127 - bias + 1) << 23; }

  // Below the least normal, adding 2^(least normal's exponent + shift) as floats aligns the
  // mantissa to the format's last place, rounded half to even by the addition itself.
  GLU_HD unsigned subnormal(unsigned b) const {
    const unsigned mask_bits = static_cast<unsigned>(127 - bias + shift() + 1) << 23;
    float f, mask;
    memcpy(&f, &b, sizeof f);
    memcpy(&mask, &mask_bits, sizeof mask);
    const float sum = f + mask;
    unsigned out;
    memcpy(&out, &sum, sizeof out);
    return out - mask_bits;
  }

  // Rebias the exponent and round the mantissa to nearest even (the carry may step the
  // exponent; saturation keeps it finite).
  GLU_HD unsigned normal(unsigned b) const {
    const unsigned rebias = static_cast<unsigned>(bias - 127) << 23;  // modulo 2^32
    const unsigned half_minus_one = (1u << (shift() - 1)) - 1;
    return (b + rebias + half_minus_one + ((b >> shift()) & 1u)) >> shift();
  }
};

}  // namespace glu_fused
