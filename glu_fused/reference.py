"""The reference: every function of glu_fused in plain PyTorch.

It defines the numerics that every kernel is checked against. Halves are split with views,
the arithmetic runs in float32 for float16, bfloat16 and float32 inputs and in float64 for
float64 inputs, and the result is rounded once to the input dtype. Built only from
differentiable PyTorch ops, it is differentiable to any order, in reverse and forward mode,
and under vmap.
"""

from __future__ import annotations

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


def activate(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) for the activations of `gated`."""
    if activation == "sigmoid":
        return torch.sigmoid(gate)
    if activation == "silu":
        return F.silu(gate)
    if activation == "gelu":
        return F.gelu(gate)
    if activation == "gelu_tanh":
        return F.gelu(gate, approximate="tanh")
    if activation == "relu":
        return F.relu(gate)
    _checks.check_activation(activation)
    raise AssertionError("unreachable")


def _packed_math(
    x1: torch.Tensor, x2: torch.Tensor, function: str, alpha: float, limit: float
) -> torch.Tensor:
    if function == "glu":
        return x1 * torch.sigmoid(x2)
    if function == "clamped_swiglu":
        g = x1.clamp(max=limit)
        v = x2.clamp(-limit, limit)
        return g * torch.sigmoid(alpha * g) * (v + 1)
    gate_activation = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh",
                       "reglu": "relu"}[function]
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


def _checked(x: torch.Tensor, dim: int, layout: str) -> tuple[int, bool]:
    _checks.check_dtype(x)
    interleaved = _checks.is_interleaved(layout)
    return _checks.split_dim(x, dim), interleaved


def glu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """x1 * sigmoid(x2)."""
    dim, interleaved = _checked(x, dim, layout)
    return packed(x, dim, "glu", interleaved)


def swiglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """silu(x1) * x2."""
    dim, interleaved = _checked(x, dim, layout)
    return packed(x, dim, "swiglu", interleaved)


def geglu(
    x: torch.Tensor, dim: int = -1, *, approximate: str = "none", layout: str = "halves"
) -> torch.Tensor:
    """gelu(x1, approximate) * x2."""
    _checks.check_approximate(approximate)
    dim, interleaved = _checked(x, dim, layout)
    return packed(x, dim, "geglu_tanh" if approximate == "tanh" else "geglu", interleaved)


def reglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    """relu(x1) * x2."""
    dim, interleaved = _checked(x, dim, layout)
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
    dim, interleaved = _checked(x, dim, layout)
    return packed(x, dim, "clamped_swiglu", interleaved, alpha, limit)


def gated(gate: torch.Tensor, value: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * value for two tensors of one shape."""
    _checks.check_gate_value(gate, value)
    _checks.check_activation(activation)
    return gated_unchecked(gate, value, activation)


def gated_unchecked(gate: torch.Tensor, value: torch.Tensor, activation: str) -> torch.Tensor:
    out = activate(_opmath(gate), activation) * _opmath(value)
    return out.to(gate.dtype).contiguous()
