"""The element math of the Triton kernels: csrc/glu_math.h's formulas, term for term.

Triton kernels cannot include that header, so its formulas are written here again, in the
same order of operations, with the same stable forms, NaN rules and masks (see its comments
for why each form is what it is). Arguments are in the compute type (float32, or float64
for float64 inputs); every constant meets them as a Python scalar, which Triton converts
to the tensor's type, so float64 keeps full precision.

One addition: erfc. Triton's portable math has erf but no erfc, and GELU needs erfc for
negative inputs, where 1 + erf cancels. `erfc` below is built from exp and rational
functions: W. J. Cody's (1969) approximations in float64 (relative error near 1e-16), and a
Chebyshev fit of relative error below 1.2e-7 in float32 (Numerical Recipes' erfcc), which
costs one exp and one division.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from .. import _table
from . import INTERPRETER

# On a GPU, tl.exp of float32 is ex2.approx of x * log2(e), whose rounding costs up to
# |x| * 2^-24 of relative accuracy (5e-6 near |x| = 88, half the float32 tolerance), so the
# device library's accurate exp is called instead. The interpreter has no device library;
# its tl.exp is numpy's, accurate already.
INTERPRETED = tl.constexpr(INTERPRETER)

# Activation codes, as the table gives them (csrc/glu_math.h's enum Activation).
SIGMOID = tl.constexpr(_table.SIGMOID.code)
SILU = tl.constexpr(_table.SILU.code)
GELU = tl.constexpr(_table.GELU.code)
GELU_TANH = tl.constexpr(_table.GELU_TANH.code)
RELU = tl.constexpr(_table.RELU.code)
CLAMPED_SILU = tl.constexpr(_table.CLAMPED_SILU.code)

INV_SQRT2 = tl.constexpr(0.70710678118654752440)
INV_SQRT_2PI = tl.constexpr(0.39894228040143267794)
SQRT_2_OVER_PI = tl.constexpr(0.79788456080286535588)
GELU_CUBIC = tl.constexpr(0.044715)
INV_SQRT_PI = tl.constexpr(0.56418958354775628695)


@triton.jit
def exp(x):
    if INTERPRETED:
        return tl.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def reciprocal(x):
    """1 / x, for x in [1, 2^126] or beyond the range where the caller uses the result.

    On a GPU, float32 `/` is div.full, which rescales operands that lie beyond 2^126 or
    below 2^-126 before it multiplies by the approximate reciprocal; within that range,
    div.approx (fast_dividef) computes the same product, bit for bit, without the checks
    and rescaling (seven fewer instructions). float64 keeps its IEEE division."""
    if INTERPRETED or x.dtype == tl.float64:
        return 1.0 / x
    else:
        return libdevice.fast_dividef(1.0, x)


@triton.jit
def sigmoid_parts(x):
    """(sigmoid(x), 1 - sigmoid(x)) from e = exp(-|x|), each without cancellation."""
    e = exp(0.0 - tl.abs(x))
    big = reciprocal(1.0 + e)
    small = e * big
    return tl.where(x < 0.0, small, big), tl.where(x < 0.0, big, small)


@triton.jit
def clamp_max(x, hi):
    """min(x, hi), keeping NaN."""
    return tl.where(x > hi, hi, x)


@triton.jit
def clamp(x, lo, hi):
    return tl.where(x < lo, lo, clamp_max(x, hi))


@triton.jit
def pass_if_inside(x, lo, hi, upstream):
    """upstream strictly inside (lo, hi), else 0 (NaN gives 0): clamp's gradient mask."""
    return tl.where(x > lo, tl.where(x < hi, upstream, 0.0), 0.0)


@triton.jit
def _poly_step(acc, y, c):
    return acc * y + c


@triton.jit
def _times_exp_minus_square(x, a, p, S2: tl.constexpr):
    """x exp(p - S2 a^2) for a >= 0, S2 = 1 or 1/2: a^2 split as h^2 + (a - h)(a + h), h = a
    to 1/16, so that S2 h^2 is exact and the rounding of a^2 is not magnified by the
    exponential; exp(-S2 h^2), the factor that underflows first, comes last, so that only
    the result can be subnormal (beyond the range where the callers use it, inf - inf
    makes NaN)."""
    h = tl.floor(a * 16.0) / 16.0
    return (x * exp(p - S2 * ((a - h) * (a + h)))) * exp(0.0 - S2 * (h * h))


@triton.jit
def _erfc_nonneg_f64(a, S: tl.constexpr, S2: tl.constexpr):
    """erfc(S a) for a >= 0 (or NaN), S^2 = S2, float64: Cody's three intervals."""
    y = a * S
    # |y| <= 0.46875: 1 - erf(y), erf from a rational function of y^2.
    z = y * y
    num = 1.85777706184603153e-1 * z
    den = z
    num = (num + 3.16112374387056560e00) * z
    den = (den + 2.36012909523441209e01) * z
    num = (num + 1.13864154151050156e02) * z
    den = (den + 2.44024637934444173e02) * z
    num = (num + 3.77485237685302021e02) * z
    den = (den + 1.28261652607737228e03) * z
    small = 1.0 - y * (num + 3.20937758913846947e03) / (den + 2.84423683343917062e03)
    # 0.46875 < y <= 4: exp(-y^2) times a rational function of y.
    num = 2.15311535474403846e-8 * y
    den = y
    num = (num + 5.64188496988670089e-1) * y
    den = (den + 1.57449261107098347e01) * y
    num = (num + 8.88314979438837594e00) * y
    den = (den + 1.17693950891312499e02) * y
    num = (num + 6.61191906371416295e01) * y
    den = (den + 5.37181101862009858e02) * y
    num = (num + 2.98635138197400131e02) * y
    den = (den + 1.62138957456669019e03) * y
    num = (num + 8.81952221241769090e02) * y
    den = (den + 3.29079923573345963e03) * y
    num = (num + 1.71204761263407058e03) * y
    den = (den + 4.36261909014324716e03) * y
    num = (num + 2.05107837782607147e03) * y
    den = (den + 3.43936767414372164e03) * y
    middle = (num + 1.23033935479799725e03) / (den + 1.23033935480374942e03)
    # y > 4: exp(-y^2) / y times a series in 1 / y^2 (evaluated at 4 elsewhere: no 1 / 0).
    yt = tl.where(y > 4.0, y, 4.0)
    w = 1.0 / (yt * yt)
    num = 1.63153871373020978e-2 * w
    den = w
    num = (num + 3.05326634961232344e-1) * w
    den = (den + 2.56852019228982242e00) * w
    num = (num + 3.60344899949804439e-1) * w
    den = (den + 1.87295284992346047e00) * w
    num = (num + 1.25781726111229246e-1) * w
    den = (den + 5.27905102951428412e-1) * w
    num = (num + 1.60837851487422766e-2) * w
    den = (den + 6.05183413124413191e-2) * w
    tail = (INV_SQRT_PI - w * (num + 6.58749161529837803e-4) / (den + 2.33520497626869185e-3)) / yt
    large = _times_exp_minus_square(tl.where(y <= 4.0, middle, tail), a, 0.0, S2)
    # Beyond 27.25, erfc rounds to 0 (below half the smallest subnormal double); NaN fails
    # the comparison and stays.
    large = tl.where(y > 27.25, 0.0, large)
    return tl.where(y <= 0.46875, small, large)


@triton.jit
def _erfc_nonneg_f32(a, S: tl.constexpr, S2: tl.constexpr):
    """erfc(S a) for a >= 0 (or NaN), S^2 = S2, float32: t exp(-y^2 + P(t)), y = S a,
    t = 1 / (1 + y/2)."""
    t = reciprocal(1.0 + 0.5 * (a * S))
    p = 0.17087277
    p = _poly_step(p, t, -0.82215223)
    p = _poly_step(p, t, 1.48851587)
    p = _poly_step(p, t, -1.13520398)
    p = _poly_step(p, t, 0.27886807)
    p = _poly_step(p, t, -0.18628806)
    p = _poly_step(p, t, 0.09678418)
    p = _poly_step(p, t, 0.37409196)
    p = _poly_step(p, t, 1.00002368)
    p = _poly_step(p, t, -1.26551223)
    # Beyond 10.1, erfc rounds to 0 (below half the smallest subnormal float); NaN fails the
    # comparison and stays.
    return tl.where(a * S > 10.1, 0.0, _times_exp_minus_square(t, a, p, S2))


@triton.jit
def _erfc_nonneg(a, S: tl.constexpr, S2: tl.constexpr):
    """erfc(S a) for a >= 0, in a's type."""
    if a.dtype == tl.float64:
        return _erfc_nonneg_f64(a, S, S2)
    else:
        return _erfc_nonneg_f32(a, S, S2)


@triton.jit
def erfc(x):
    """erfc(x) in x's type, from erfc(|x|): erfc(-y) = 2 - erfc(y)."""
    e = _erfc_nonneg(tl.abs(x), 1.0, 1.0)
    return tl.where(x < 0.0, 2.0 - e, e)


@triton.jit
def gelu_cdf(g):
    """Phi(g) = erfc(-g / sqrt 2) / 2, from e = erfc(|g| / sqrt 2) / 2: e for g <= 0, 1 - e
    for g > 0. The exponential's argument, -g^2 / 2, is split from g itself, not from the
    rounded |g| / sqrt 2, whose rounding error the exponential would magnify 2 y^2 times
    in the tail (a relative error of 1.2e-5 near g = -13 in float32)."""
    e = 0.5 * _erfc_nonneg(tl.abs(g), INV_SQRT2, 0.5)
    return tl.where(g > 0.0, 1.0 - e, e)


@triton.jit
def gelu_tanh_inner(g):
    # Tensors on the left of constexprs: the interpreter cannot multiply them the other way.
    return (g + g * GELU_CUBIC * g * g) * SQRT_2_OVER_PI


@triton.jit
def gated_forward(g, v, alpha, limit, ACT: tl.constexpr):
    """act(g) * v (ClampedSilu: gpt-oss's clamped form)."""
    if ACT == SIGMOID:
        s, _ = sigmoid_parts(g)
        out = v * s
    elif ACT == SILU:
        s, _ = sigmoid_parts(g)
        out = (g * s) * v
    elif ACT == GELU:
        out = (g * gelu_cdf(g)) * v
    elif ACT == GELU_TANH:
        s, _ = sigmoid_parts(2.0 * gelu_tanh_inner(g))
        out = (g * s) * v
    elif ACT == RELU:
        out = tl.where(g < 0.0, 0.0, g) * v
    else:
        gc = clamp_max(g, limit)
        vc = clamp(v, 0.0 - limit, limit)
        s, _ = sigmoid_parts(alpha * gc)
        out = (gc * s) * (vc + 1.0)
    return out


@triton.jit
def gated_backward(g, v, dy, alpha, limit, ACT: tl.constexpr):
    """(d/dg, d/dv) of act(g) * v for the upstream gradient dy."""
    if ACT == SIGMOID:
        s, oms = sigmoid_parts(g)
        dv = dy * s
        dg = (dy * v) * (s * oms)
    elif ACT == SILU:
        s, oms = sigmoid_parts(g)
        dv = dy * (g * s)
        dg = (dy * v) * (s * (1.0 + g * oms))
    elif ACT == GELU:
        c = gelu_cdf(g)
        pdf = exp(-0.5 * g * g) * INV_SQRT_2PI
        dv = dy * (g * c)
        dg = (dy * v) * (c + g * pdf)
    elif ACT == GELU_TANH:
        s, oms = sigmoid_parts(2.0 * gelu_tanh_inner(g))
        half_sech2 = 2.0 * (s * oms)
        inner_slope = (1.0 + g * (3.0 * GELU_CUBIC) * g) * SQRT_2_OVER_PI
        tail = tl.where(half_sech2 == 0.0, 0.0, g * half_sech2 * inner_slope)
        dv = dy * (g * s)
        dg = (dy * v) * (s + tail)
    elif ACT == RELU:
        dv = dy * tl.where(g < 0.0, 0.0, g)
        dg = tl.where(g > 0.0, dy * v, 0.0)
    else:
        gc = clamp_max(g, limit)
        vc = clamp(v, 0.0 - limit, limit)
        s, oms = sigmoid_parts(alpha * gc)
        dv = pass_if_inside(v, 0.0 - limit, limit, dy * (gc * s))
        dgc = (dy * (vc + 1.0)) * (s + alpha * (gc * (s * oms)))
        dg = tl.where(g < limit, dgc, 0.0)
    return dg, dv


@triton.jit
def gated_forward_backward(g, v, dy, alpha, limit, ACT: tl.constexpr):
    """(act(g) * v, d/dg, d/dv): the in-place backward's three results. GeLU shares its CDF
    between them, which keeps float64 GeLU within 255 registers; the expressions are
    gated_forward's and gated_backward's, so the results are theirs bit for bit
    (tests/test_extremes.py holds them equal)."""
    if ACT == GELU:
        c = gelu_cdf(g)
        a = g * c
        pdf = exp(-0.5 * g * g) * INV_SQRT_2PI
        y = a * v
        dv = dy * a
        dg = (dy * v) * (c + g * pdf)
    else:
        y = gated_forward(g, v, alpha, limit, ACT)
        dg, dv = gated_backward(g, v, dy, alpha, limit, ACT)
    return y, dg, dv
