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


# ---- bias and token counts (docs/contract.md, "Bias and token counts") ---------------------


def _check_bias(b, name: str, x: torch.Tensor, x_name: str, size: int) -> None:
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"glu_fused: {name} must be a torch.Tensor, got {type(b).__name__}")
    if b.dim() != 1 or b.shape[0] != size:
        raise ValueError(f"glu_fused: {name} must have shape ({size},), got {tuple(b.shape)}")
    if b.dtype != x.dtype:
        raise ValueError(f"glu_fused: {name} must have {x_name}'s dtype {x.dtype}, got {b.dtype}")
    if b.device != x.device:
        raise ValueError(
            f"glu_fused: {name} must be on {x_name}'s device {x.device}, got {b.device}"
        )


def _check_valid_tokens(v, x: torch.Tensor, x_name: str, dim: int) -> None:
    """Counts of rows of x [experts, tokens, features], int32 [experts] on x's device, each in
    [0, tokens]; the values are read only on the CPU (elsewhere: no synchronization)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"glu_fused: valid_tokens must be a torch.Tensor, got {type(v).__name__}")
    if x.dim() != 3 or dim != 2:
        raise ValueError(
            f"glu_fused: valid_tokens counts the rows of {x_name} shaped [experts, tokens, "
            f"features], split along the last dim; got {x.dim()} dimensions, dim {dim}"
        )
    if v.dtype != torch.int32:
        raise ValueError(f"glu_fused: valid_tokens must be torch.int32, got {v.dtype}")
    if v.dim() != 1 or v.shape[0] != x.shape[0]:
        raise ValueError(
            f"glu_fused: valid_tokens must have shape ({x.shape[0]},), got {tuple(v.shape)}"
        )
    if v.device != x.device:
        raise ValueError(
            f"glu_fused: valid_tokens must be on {x_name}'s device {x.device}, got {v.device}"
        )
    if v.device.type == "cpu" and not torch.compiler.is_compiling():
        tokens = x.shape[1]
        for expert, count in enumerate(v.tolist()):
            if not 0 <= count <= tokens:
                raise ValueError(
                    f"glu_fused: valid_tokens must lie in [0, {tokens}], got {count} "
                    f"for expert {expert}"
                )


def packed_rows(x: torch.Tensor, dim: int, bias, valid_tokens) -> None:
    """A packed call's bias and token counts, in the ops' order (dim made non-negative)."""
    if bias is not None:
        if dim != x.dim() - 1:
            raise ValueError(
                f"glu_fused: a bias is added along the last dim; split along it, got dim {dim}"
            )
        _check_bias(bias, "bias", x, "x", x.shape[dim])
    if valid_tokens is not None:
        _check_valid_tokens(valid_tokens, x, "x", dim)


def gated_rows(gate: torch.Tensor, gate_bias, value_bias, valid_tokens) -> None:
    """A gated call's biases and token counts, in the ops' order."""
    if (gate_bias is not None or value_bias is not None) and gate.dim() == 0:
        raise ValueError(
            "glu_fused: a bias is added along the last dim; a 0-dimensional tensor has none"
        )
    if gate_bias is not None:
        _check_bias(gate_bias, "gate_bias", gate, "gate", gate.shape[-1])
    if value_bias is not None:
        _check_bias(value_bias, "value_bias", gate, "gate", gate.shape[-1])
    if valid_tokens is not None:
        _check_valid_tokens(valid_tokens, gate, "gate", gate.dim() - 1)
