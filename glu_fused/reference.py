"""The reference: every function of glu_fused in plain PyTorch.

It defines the numerics that every kernel is checked against. Halves are split with views,
the arithmetic runs in float32 for float16, bfloat16 and float32 inputs and in float64 for
float64 inputs, and the result is rounded once to the input dtype. Built only from
differentiable PyTorch ops, it is differentiable to any order, in reverse and forward mode,
and under vmap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _checks

# The packed functions by the name the fused ops use; each maps (x1, x2) to the result.
PACKED_FUNCTIONS = ("glu", "swiglu", "geglu", "geglu_tanh", "reglu", "clamped_swiglu")

DEFAULT_ALPHA = 1.702
DEFAULT_LIMIT = 7.0


def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def split(x: torch.Tensor, dim: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x1, x2): the halves of `x` along `dim`, or its even and odd positions."""
    if interleaved:
        pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
        return pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return x.chunk(2, dim)


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


def activate(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) for the activations of `gated`."""
    if activation == "sigmoid":
        return sigmoid(gate)
    if activation == "silu":
        return gate * sigmoid(gate)
    if activation == "gelu":
        return gelu(gate)
    if activation == "gelu_tanh":
        return gelu_tanh(gate)
    if activation == "relu":
        return relu(gate)
    _checks.check_activation(activation)
    raise AssertionError("unreachable")


def _clamp(x: torch.Tensor, lo: float | None, hi: float) -> torch.Tensor:
    """x.clamp(lo, hi), with its gradient fixed as 1 strictly inside (lo, hi) and 0 elsewhere,
    bounds included (as torch 2.14's clamp; some releases pass it at the bounds). NaN stays."""
    x = torch.where(x >= hi, hi, x)
    return x if lo is None else torch.where(x <= lo, lo, x)


def _packed_math(
    x1: torch.Tensor, x2: torch.Tensor, function: str, alpha: float, limit: float
) -> torch.Tensor:
    if function == "glu":
        return x1 * sigmoid(x2)
    if function == "clamped_swiglu":
        g = _clamp(x1, None, limit)
        v = _clamp(x2, -limit, limit)
        return g * sigmoid(alpha * g) * (v + 1)
    gate_activation = {
        "swiglu": "silu",
        "geglu": "gelu",
        "geglu_tanh": "gelu_tanh",
        "reglu": "relu",
    }[function]
    return activate(x1, gate_activation) * x2


def packed(
    x: torch.Tensor,
    dim: int,
    function: str,
    interleaved: bool,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
) -> torch.Tensor:
    """The packed `function` (one of PACKED_FUNCTIONS) of `x` split along a checked `dim`."""
    x1, x2 = split(_opmath(x), dim, interleaved)
    return _packed_math(x1, x2, function, alpha, limit).to(x.dtype).contiguous()


def glu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """x1 * sigmoid(x2)."""
    dim, interleaved = _checks.packed_args(x, dim, layout)
    return packed(x, dim, "glu", interleaved)


def swiglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """silu(x1) * x2."""
    dim, interleaved = _checks.packed_args(x, dim, layout)
    return packed(x, dim, "swiglu", interleaved)


def geglu(
    x: torch.Tensor, dim: int = -1, *, approximate: str = "none", layout: str = "halves"
) -> torch.Tensor:
    """gelu(x1, approximate) * x2."""
    _checks.check_approximate(approximate)
    dim, interleaved = _checks.packed_args(x, dim, layout)
    return packed(x, dim, "geglu_tanh" if approximate == "tanh" else "geglu", interleaved)


def reglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """relu(x1) * x2."""
    dim, interleaved = _checks.packed_args(x, dim, layout)
    return packed(x, dim, "reglu", interleaved)


def clamped_swiglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
    layout: str = "interleaved",
) -> torch.Tensor:
    """g * sigmoid(alpha * g) * (l + 1), g = x1.clamp(max=limit), l = x2.clamp(-limit, limit)."""
    dim, interleaved = _checks.packed_args(x, dim, layout)
    return packed(x, dim, "clamped_swiglu", interleaved, alpha, limit)


def gated(gate: torch.Tensor, value: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * value for two tensors of one shape."""
    _checks.check_gate_value(gate, value)
    _checks.check_activation(activation)
    return gated_unchecked(gate, value, activation)


def gated_unchecked(gate: torch.Tensor, value: torch.Tensor, activation: str) -> torch.Tensor:
    out = activate(_opmath(gate), activation) * _opmath(value)
    return out.to(gate.dtype).contiguous()
