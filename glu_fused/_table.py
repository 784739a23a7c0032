"""The functions of glu_fused: the one Python table that everything on the Python side
derives from (the functional API, modules, integrations, the reference, the Triton kernels'
codes, tests and benchmarks).

Its C++ twin, csrc/glu_functions.h, holds what the kernels need (names, activation codes,
which half is the gate); tests/test_table.py holds the two equal, through the extension's
own export of its table (glu_fused._C.PACKED_FUNCTIONS, GATE_ACTIVATIONS, LAYOUTS).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    """A gate's activation.

    ``code`` is the kernels' name for it (csrc/glu_math.h's ``enum Activation``);
    ``torch_form`` computes it as PyTorch users write it (``F.silu``...), in the input's
    dtype, or is None where PyTorch has no such function.
    """

    name: str
    code: int
    torch_form: Callable[[torch.Tensor], torch.Tensor] | None


SIGMOID = Activation("sigmoid", 0, torch.sigmoid)
SILU = Activation("silu", 1, F.silu)
GELU = Activation("gelu", 2, F.gelu)
GELU_TANH = Activation("gelu_tanh", 3, functools.partial(F.gelu, approximate="tanh"))
RELU = Activation("relu", 4, F.relu)
# gpt-oss's clamped gate, g * sigmoid(alpha * g) with g = min(x1, limit); it also clamps the
# value, so it exists only as the packed clamped_swiglu.
CLAMPED_SILU = Activation("clamped_silu", 5, None)

# The activations of gated(gate, value, activation), by name.
GATE_ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (SIGMOID, SILU, GELU, GELU_TANH, RELU)
}
ACTIVATIONS: dict[str, Activation] = {**GATE_ACTIVATIONS, CLAMPED_SILU.name: CLAMPED_SILU}


@dataclass(frozen=True)
class PackedFunction:
    """A function of a packed input: ``activation(gate) * value`` of its two halves.

    ``name`` is the ops' ``function`` argument. ``public`` is the function of glu_fused that
    computes it, with the keyword arguments ``options``; ``layout`` is that function's
    default layout. ``gate_is_second``: the gate is x2, not x1 (glu: x1 * sigmoid(x2)).
    """

    name: str
    public: str
    options: tuple[tuple[str, str], ...]
    activation: Activation
    gate_is_second: bool = False
    layout: str = "halves"


PACKED_FUNCTIONS: dict[str, PackedFunction] = {
    f.name: f
    for f in (
        PackedFunction("glu", "glu", (), SIGMOID, gate_is_second=True),
        PackedFunction("swiglu", "swiglu", (), SILU),
        PackedFunction("geglu", "geglu", (), GELU),
        PackedFunction("geglu_tanh", "geglu", (("approximate", "tanh"),), GELU_TANH),
        PackedFunction("reglu", "reglu", (), RELU),
        PackedFunction("clamped_swiglu", "clamped_swiglu", (), CLAMPED_SILU, layout="interleaved"),
    )
}

LAYOUTS = ("halves", "interleaved")

# geglu's `approximate` argument, as F.gelu spells it, and the packed function of each.
GELU_APPROXIMATIONS: dict[str, str] = {"none": "geglu", "tanh": "geglu_tanh"}

# clamped_swiglu's defaults: gpt-oss's alpha and limit.
DEFAULT_ALPHA = 1.702
DEFAULT_LIMIT = 7.0


def packed_of(activation: str) -> PackedFunction | None:
    """The packed function ``activation(x1) * x2`` (gate first), or None: sigmoid has none
    (glu is x1 * sigmoid(x2), the other way round)."""
    for f in PACKED_FUNCTIONS.values():
        if f.activation.name == activation and not f.gate_is_second:
            return f
    return None
