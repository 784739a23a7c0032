"""The reference's argument checks, in Python: bad input raises before anything runs.

The ops check the same things in C++ (csrc/glu_plan.cpp), in the same order and with the
same messages, so that every backend rejects bad input alike; tests/test_errors.py compares
the two message for message.
"""

from __future__ import annotations

import torch

from ._table import GATE_ACTIVATIONS, GELU_APPROXIMATIONS, LAYOUTS, PACKED_FUNCTIONS

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _unknown(what: str, name: object, choices) -> ValueError:
    return ValueError(f"glu_fused: unknown {what} {name!r}; expected one of {tuple(choices)}")


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


def check_function(function: str) -> None:
    if function not in PACKED_FUNCTIONS:
        raise _unknown("function", function, PACKED_FUNCTIONS)


def packed_args(x: torch.Tensor, dim: int, function: str, layout: str) -> tuple[int, bool]:
    """(dim made non-negative, interleaved?) for a packed op's arguments, all checked in the
    ops' order: function, dtype, layout, dim."""
    check_function(function)
    check_dtype(x)
    interleaved = is_interleaved(layout)
    return split_dim(x, dim), interleaved


def is_interleaved(layout: str) -> bool:
    if layout not in LAYOUTS:
        raise _unknown("layout", layout, LAYOUTS)
    return layout == "interleaved"


def geglu_function(approximate: str) -> str:
    """The packed function of geglu(approximate=...)."""
    try:
        return GELU_APPROXIMATIONS[approximate]
    except (KeyError, TypeError):
        raise _unknown("approximate", approximate, GELU_APPROXIMATIONS) from None


def check_activation(activation: str) -> None:
    if activation not in GATE_ACTIVATIONS:
        raise _unknown("activation", activation, GATE_ACTIVATIONS)


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


def gated_args(gate: torch.Tensor, value: torch.Tensor, activation: str) -> None:
    """gated()'s arguments, in the ops' order: dtypes, shape, dtype and device, activation."""
    check_dtype(gate, "gate")
    check_dtype(value, "value")
    check_same(gate, value, "gate", "value")
    check_activation(activation)
