"""Argument checks shared by every backend: bad input raises before anything runs."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LAYOUTS = ("halves", "interleaved")
GELU_APPROXIMATIONS = ("none", "tanh")
GATE_ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu")


def check_dtype(t: torch.Tensor, name: str = "x") -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"glu_fused: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def split_dim(x: torch.Tensor, dim: int) -> int:
    """`dim` made non-negative, after checking it exists and that x's size along it is even."""
    rank = x.dim()
    if rank == 0:
        raise ValueError("glu_fused: cannot split a 0-dimensional tensor")
    if not -rank <= dim < rank:
        raise ValueError(f"glu_fused: dim {dim} is out of range for a tensor of {rank} dimensions")
    dim = dim % rank
    if x.shape[dim] % 2:
        raise ValueError(
            f"glu_fused: the size along dim {dim} must be even to split it in two, "
            f"got {x.shape[dim]}"
        )
    return dim


def packed_args(x: torch.Tensor, dim: int, layout: str) -> tuple[int, bool]:
    """(dim made non-negative, interleaved?) for a packed function's arguments, all checked."""
    check_dtype(x)
    interleaved = is_interleaved(layout)
    return split_dim(x, dim), interleaved


def is_interleaved(layout: str) -> bool:
    if layout not in LAYOUTS:
        raise ValueError(f"glu_fused: unknown layout {layout!r}; expected one of {LAYOUTS}")
    return layout == "interleaved"


def check_approximate(approximate: str) -> None:
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(
            f"glu_fused: unknown approximate {approximate!r}; expected one of {GELU_APPROXIMATIONS}"
        )


def check_activation(activation: str) -> None:
    if activation not in GATE_ACTIVATIONS:
        raise ValueError(
            f"glu_fused: unknown activation {activation!r}; expected one of {GATE_ACTIVATIONS}"
        )


def check_same(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """a and b have one shape, dtype and device."""
    for what, x, y in (
        ("shape", tuple(a.shape), tuple(b.shape)),
        ("dtype", a.dtype, b.dtype),
        ("device", a.device, b.device),
    ):
        if x != y:
            raise ValueError(
                f"glu_fused: {a_name} and {b_name} must have the same {what}, got {x} and {y}"
            )


def check_gate_value(gate: torch.Tensor, value: torch.Tensor) -> None:
    check_dtype(gate, "gate")
    check_dtype(value, "value")
    check_same(gate, value, "gate", "value")
