"""The Triton ops' implementations: arguments checked, results allocated, layouts found
(layout.py), one kernel launched per call (kernels.py). The Triton counterpart of
csrc/glu_ops.cpp."""

import contextlib
import os

import torch
import triton
import triton.language as tl

from .. import _checks
from . import kernels, layout
from . import math as m

# Each packed function: the gate's activation, and whether the gate is the second half.
PACKED_FUNCTIONS = {
    "glu": (m.SIGMOID, True),
    "swiglu": (m.SILU, False),
    "geglu": (m.GELU, False),
    "geglu_tanh": (m.GELU_TANH, False),
    "reglu": (m.RELU, False),
    "clamped_swiglu": (m.CLAMPED_SILU, False),
}
GATE_ACTIVATIONS = {
    "sigmoid": m.SIGMOID,
    "silu": m.SILU,
    "gelu": m.GELU,
    "gelu_tanh": m.GELU_TANH,
    "relu": m.RELU,
}

# As in the extension: with $GLU_FUSED_POISON_OUTPUTS set (and not "0") when this loads,
# every result starts as NaN, so that an element a kernel does not write fails the tests.
_POISON = os.environ.get("GLU_FUSED_POISON_OUTPUTS", "0") != "0"


def _new_result(shape, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if _POISON:
        out.fill_(float("nan"))
    return out


def _packed_function(function: str) -> tuple[int, bool]:
    if function not in PACKED_FUNCTIONS:
        raise ValueError(
            f"glu_fused: unknown function {function!r}; expected one of {tuple(PACKED_FUNCTIONS)}"
        )
    act, gate_is_second = PACKED_FUNCTIONS[function]
    return act.value, gate_is_second


def _at(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A one-element view of t's storage `offset` elements after t's first: the pointer the
    kernel gets (the interpreter, too, reads through the whole storage)."""
    return t.as_strided((1,), (1,), t.storage_offset() + offset)


def _config(pairs: layout.PairLayout) -> dict:
    """Tile and warps for a layout: the heuristic of kernels.py's docstring."""
    block_e = min(triton.next_power_of_2(pairs.run_len), kernels.TILE)
    block_r = min(kernels.TILE // block_e, triton.next_power_of_2(pairs.runs))
    warps = min(max(block_r * block_e // kernels.OUTPUTS_PER_WARP, 1), kernels.MAX_WARPS)
    # Offsets inside a run reach elem_stride * (run_len + BLOCK_E): 64-bit past int32.
    wide = pairs.elem_stride * (pairs.run_len + block_e) >= 2**31
    programs = triton.cdiv(pairs.runs, block_r) * triton.cdiv(pairs.run_len, block_e)
    return {
        "grid": (programs,),
        "BLOCK_R": block_r,
        "BLOCK_E": block_e,
        "WIDE": wide,
        "num_warps": warps,
    }


def _launch(kernel, pointers, strides, pairs, like, act, alpha=0.0, limit=0.0, gate_first=True):
    """One launch of `kernel` over the runs of `pairs`, on like's device and current stream.
    (alpha and limit only matter to the clamped activation; `gated` has no packed pairs.)"""
    config = _config(pairs)
    grid = config.pop("grid")
    guard = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        kernel[grid](
            *pointers,
            pairs.runs,
            pairs.run_len,
            pairs.runs_per_outer,
            *strides,
            float(alpha),
            float(limit),
            ACT=act,
            COMPUTE=tl.float64 if like.dtype == torch.float64 else tl.float32,
            PAIRS=pairs.elem_stride == 2,
            GATE_FIRST=gate_first,
            **config,
        )


def _split_of(x: torch.Tensor, dim: int, function: str, interleaved: bool):
    """(dim made non-negative, the activation, whether the gate is second, x's layout)."""
    _checks.check_dtype(x)
    dim = _checks.split_dim(x, dim)
    act, gate_is_second = _packed_function(function)
    return dim, act, gate_is_second, layout.split(x, dim, interleaved, gate_is_second)


def _halved_shape(x: torch.Tensor, dim: int) -> list[int]:
    shape = list(x.shape)
    shape[dim] //= 2
    return shape


def _pair_pointers(s: layout.Split) -> tuple[torch.Tensor, torch.Tensor]:
    return _at(s.x, s.gate_offset), _at(s.x, s.value_offset)


def _gate_first(s: layout.Split) -> bool:
    return s.gate_offset < s.value_offset


def glu_forward(x, dim, function, interleaved, alpha, limit) -> torch.Tensor:
    dim, act, _, s = _split_of(x, dim, function, interleaved)
    out = _new_result(_halved_shape(x, dim), x)
    if out.numel() == 0:
        return out
    _launch(
        kernels.forward_kernel,
        (*_pair_pointers(s), out),
        (s.layout.outer_stride, s.layout.run_stride),
        s.layout,
        x,
        act,
        alpha,
        limit,
        _gate_first(s),
    )
    return out


def glu_backward(grad_out, x, dim, function, interleaved, alpha, limit) -> torch.Tensor:
    dim, act, gate_is_second, s = _split_of(x, dim, function, interleaved)
    shape = _halved_shape(x, dim)
    if list(grad_out.shape) != shape:
        raise ValueError(
            f"glu_fused: grad_out has shape {tuple(grad_out.shape)}, expected {tuple(shape)}"
        )
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise ValueError("glu_fused: grad_out must match the input's dtype and device")
    grad_in = _new_result(x.shape, x)
    if grad_in.numel() == 0:
        return grad_in
    g = layout.split(grad_in, dim, interleaved, gate_is_second)
    _launch(
        kernels.backward_kernel,
        (*_pair_pointers(s), grad_out.contiguous(), *_pair_pointers(g)),
        (s.layout.outer_stride, s.layout.run_stride, g.layout.outer_stride, g.layout.run_stride),
        s.layout,
        x,
        act,
        alpha,
        limit,
        _gate_first(s),
    )
    return grad_in


def _gated_args(gate, value, activation) -> int:
    """The activation's code, after checking gate, value and the activation's name."""
    _checks.check_gate_value(gate, value)
    _checks.check_activation(activation)
    return GATE_ACTIVATIONS[activation].value


def gated_forward(gate, value, activation) -> torch.Tensor:
    act = _gated_args(gate, value, activation)
    out = _new_result(gate.shape, gate)
    if out.numel() == 0:
        return out
    gate, value, rows = layout.gated(gate, value)
    _launch(
        kernels.forward_kernel,
        (gate, value, out),
        (rows.outer_stride, rows.run_stride),
        rows,
        gate,
        act,
    )
    return out


def gated_backward(grad_out, gate, value, activation) -> tuple[torch.Tensor, torch.Tensor]:
    act = _gated_args(gate, value, activation)
    _checks.check_same(grad_out, gate, "grad_out", "gate")
    grad_gate = _new_result(gate.shape, gate)
    grad_value = _new_result(gate.shape, gate)
    if grad_gate.numel() == 0:
        return grad_gate, grad_value
    gate, value, rows = layout.gated(gate, value)
    dense = rows.dense()
    _launch(
        kernels.backward_kernel,
        (gate, value, grad_out.contiguous(), grad_gate, grad_value),
        (rows.outer_stride, rows.run_stride, dense.outer_stride, dense.run_stride),
        rows,
        gate,
        act,
    )
    return grad_gate, grad_value
