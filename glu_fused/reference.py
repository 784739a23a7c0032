"""The reference: every function of glu_fused in plain PyTorch.

It defines the numerics that every kernel is checked against. Halves are split with views,
the arithmetic runs in float32 for float16, bfloat16 and float32 inputs and in float64 for
float64 inputs, and the result is rounded once to the input dtype. Built only from
differentiable PyTorch ops, it is differentiable to any order, in reverse and forward mode,
and under vmap.

`packed` and `gated` take the arguments the fused ops take (csrc/glu_ops.cpp), checked as
the ops check them: the "reference" backend runs them in the ops' place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _checks, _fp8
from ._table import DEFAULT_ALPHA, DEFAULT_LIMIT, PACKED_FUNCTIONS


def opmath(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def split(x: torch.Tensor, dim: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x1, x2): the halves of `x` along `dim`, or its even and odd positions."""
    if interleaved:
        pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
        return pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return x.chunk(2, dim)


def join(first: torch.Tensor, second: torch.Tensor, dim: int, interleaved: bool) -> torch.Tensor:
    """The inverse of split: halves, or even and odd positions, along dim."""
    if interleaved:
        return torch.stack((first, second), dim + 1).flatten(dim, dim + 1)
    return torch.cat((first, second), dim)


# Stable forms. torch.sigmoid's gradient s * (1 - s) loses all relative accuracy for large
# x (1 - s cancels), and F.gelu's 1 + erf(x / sqrt 2) for negative x, even in float64. The
# reference must be more accurate than what it checks, so it is written in forms that keep
# full relative accuracy, values and gradients, over the whole range.


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|): exp never overflows and
    the gradient e / (1 + e)^2 comes out without cancellation on both sides."""
    nonneg = x >= 0
    e = torch.exp(-torch.where(nonneg, x, -x))
    p = 1 / (1 + e)
    return torch.where(nonneg, p, e * p)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2: F.gelu(x) without its cancellation."""
    return 0.5 * x * torch.special.erfc(-x / math.sqrt(2))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh") as x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715x^3).

    0.5 * (1 + tanh(u)) = sigmoid(2u): the same function without the cancellation of
    1 + tanh(u). The cubic is taken of x clamped to +-1e4, where the sigmoid is saturated
    anyway, so that neither it nor its derivative can overflow.
    """
    xc = x.clamp(-1e4, 1e4)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * xc * xc * xc)
    return x * sigmoid(2 * u)


def relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * sigmoid(x)


# The math of each gate activation of glu_fused._table, by name.
ACTIVATIONS = {
    "sigmoid": sigmoid,
    "silu": silu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "relu": relu,
}


def activate(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) for the activations of `gated`."""
    _checks.check_activation(activation)
    return ACTIVATIONS[activation](gate)


def clamp(x: torch.Tensor, lo: float | None, hi: float) -> torch.Tensor:
    """x.clamp(lo, hi), with its gradient fixed as 1 strictly inside (lo, hi) and 0 elsewhere,
    bounds included (as torch 2.14's clamp; some releases pass it at the bounds). NaN stays."""
    x = torch.where(x >= hi, hi, x)
    return x if lo is None else torch.where(x <= lo, lo, x)


def row_mask(x: torch.Tensor, valid_tokens: torch.Tensor | None) -> torch.Tensor | None:
    """[experts, tokens, 1]: whether each row of x [experts, tokens, features] is below its
    expert's count (None without counts). Computed on x's device: no synchronization."""
    if valid_tokens is None:
        return None
    tokens = torch.arange(x.shape[1], device=x.device)
    return (tokens < valid_tokens[:, None]).unsqueeze(-1)


def with_rows(
    t: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """t (in the compute type) plus its bias, unrounded, with the rows past the counts taken
    as zeros: they are not read (the fused ops neither read nor write them)."""
    if bias is not None:
        t = t + opmath(bias)
    return t if mask is None else torch.where(mask, t, 0)


def _packed_math(
    x1: torch.Tensor, x2: torch.Tensor, function: str, alpha: float, limit: float
) -> torch.Tensor:
    f = PACKED_FUNCTIONS[function]
    if f.gate_is_second:
        x1, x2 = x2, x1
    if f.activation.name == "clamped_silu":
        g = clamp(x1, None, limit)
        v = clamp(x2, -limit, limit)
        return g * sigmoid(alpha * g) * (v + 1)
    return ACTIVATIONS[f.activation.name](x1) * x2


def packed(
    x: torch.Tensor,
    dim: int,
    function: str,
    layout: str = "halves",
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The packed `function` (a name of glu_fused._table.PACKED_FUNCTIONS) of `x` split
    along `dim`: the glu_forward op's arguments. With `bias` (x's layout along the last dim)
    the function of x + bias; with `valid_tokens` the rows of x [experts, tokens, 2H] past
    each expert's count give zeros (where the fused ops leave them unwritten)."""
    dim, interleaved = _checks.packed_args(x, dim, function, layout)
    _checks.packed_rows(x, dim, bias, valid_tokens)
    mask = row_mask(x, valid_tokens)
    x1, x2 = split(with_rows(opmath(x), bias, mask), dim, interleaved)
    return _packed_math(x1, x2, function, alpha, limit).to(x.dtype).contiguous()


def glu(
    x: torch.Tensor, dim: int = -1, *, layout: str = "halves", bias=None, valid_tokens=None
) -> torch.Tensor:
    """x1 * sigmoid(x2)."""
    return packed(x, dim, "glu", layout, bias=bias, valid_tokens=valid_tokens)


def swiglu(
    x: torch.Tensor, dim: int = -1, *, layout: str = "halves", bias=None, valid_tokens=None
) -> torch.Tensor:
    """silu(x1) * x2."""
    return packed(x, dim, "swiglu", layout, bias=bias, valid_tokens=valid_tokens)


def geglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    approximate: str = "none",
    layout: str = "halves",
    bias=None,
    valid_tokens=None,
) -> torch.Tensor:
    """gelu(x1, approximate) * x2."""
    function = _checks.geglu_function(approximate)
    return packed(x, dim, function, layout, bias=bias, valid_tokens=valid_tokens)


def reglu(
    x: torch.Tensor, dim: int = -1, *, layout: str = "halves", bias=None, valid_tokens=None
) -> torch.Tensor:
    """relu(x1) * x2."""
    return packed(x, dim, "reglu", layout, bias=bias, valid_tokens=valid_tokens)


def clamped_swiglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
    layout: str = "interleaved",
    bias=None,
    valid_tokens=None,
) -> torch.Tensor:
    """g * sigmoid(alpha * g) * (l + 1), g = x1.clamp(max=limit), l = x2.clamp(-limit, limit)."""
    return packed(x, dim, "clamped_swiglu", layout, alpha, limit, bias, valid_tokens)


def gated(
    gate: torch.Tensor,
    value: torch.Tensor,
    activation: str = "silu",
    gate_bias: torch.Tensor | None = None,
    value_bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(gate + gate_bias) * (value + value_bias) for two tensors of one shape: the
    gated_forward op's arguments (rows past `valid_tokens` as for `packed`)."""
    _checks.gated_args(gate, value, activation)
    _checks.gated_rows(gate, gate_bias, value_bias, valid_tokens)
    mask = row_mask(gate, valid_tokens)
    g = with_rows(opmath(gate), gate_bias, mask)
    v = with_rows(opmath(value), value_bias, mask)
    return (ACTIVATIONS[activation](g) * v).to(gate.dtype).contiguous()


# ---- FP8 output: the activation, then the rule of glu_fused/_fp8.py -----------------------


def check_packed_fp8(x, dim, function, layout, fp8_args):
    """The glu_forward_fp8 op's checks, in its order: (dim, interleaved, Fp8Args, scale)."""
    args, scale = _fp8.from_op_args(fp8_args)
    d, interleaved = _checks.packed_args(x, dim, function, layout)
    out_shape = (*x.shape[:d], x.shape[d] // 2, *x.shape[d + 1 :])
    _fp8.check(args, out_shape, d, scale, x.device)
    return d, interleaved, args, scale


def check_gated_fp8(gate, value, activation, fp8_args):
    """The gated_forward_fp8 op's checks, in its order: (Fp8Args, scale)."""
    args, scale = _fp8.from_op_args(fp8_args)
    _checks.gated_args(gate, value, activation)
    if gate.dim() == 0:
        raise ValueError(
            "glu_fused: FP8 output is quantized along the last dim; a 0-dimensional tensor has none"
        )
    _fp8.check(args, tuple(gate.shape), gate.dim() - 1, scale, gate.device)
    return args, scale


def packed_fp8(x, dim, function, layout, alpha, limit, *fp8_args, bias=None, valid_tokens=None):
    """The glu_forward_fp8 op's call: (q, scale) of the packed `function` of x (rows past
    `valid_tokens` quantize zeros)."""
    d, interleaved, args, scale = check_packed_fp8(x, dim, function, layout, fp8_args)
    _checks.packed_rows(x, d, bias, valid_tokens)
    x1, x2 = split(with_rows(opmath(x), bias, row_mask(x, valid_tokens)), d, interleaved)
    y = _packed_math(x1, x2, function, alpha, limit)
    return _fp8.quantize(y.to(x.dtype) if args.intermediate == "input" else y, args, scale)


def gated_fp8(
    gate, value, activation, *fp8_args, gate_bias=None, value_bias=None, valid_tokens=None
):
    """The gated_forward_fp8 op's call: (q, scale) of act(gate) * value."""
    args, scale = check_gated_fp8(gate, value, activation, fp8_args)
    _checks.gated_rows(gate, gate_bias, value_bias, valid_tokens)
    mask = row_mask(gate, valid_tokens)
    g = with_rows(opmath(gate), gate_bias, mask)
    y = ACTIVATIONS[activation](g) * with_rows(opmath(value), value_bias, mask)
    return _fp8.quantize(y.to(gate.dtype) if args.intermediate == "input" else y, args, scale)
