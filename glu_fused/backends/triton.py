"""The "triton" backend: the Triton kernels of glu_fused/_triton, the portable GPU path.

Its ops are glu_fused::triton_glu_forward and the like (_ops.define_families), implemented
for CUDA tensors (ROCm's included) in Python. Triton itself is imported at the first call,
not with glu_fused.

With $TRITON_INTERPRET=1 when glu_fused is imported, the backend also runs CPU tensors,
through Triton's interpreter: how the kernels are tested on machines without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .. import _ops
from .base import OpsBackend

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
OPS = ("glu_forward", "glu_backward", "gated_forward", "gated_backward")

PACKED, GATED = _ops.define_families("triton_")


def _implementation(op: str):
    def run(*args):
        from .._triton import launch  # imports triton: at the first call only

        return getattr(launch, op)(*args)

    run.__name__ = f"triton_{op}"
    return run


if HAS_TRITON:
    for _op in OPS:
        for _key in ("CUDA", "CPU") if INTERPRETER else ("CUDA",):
            _ops._lib.impl(f"triton_{_op}", _implementation(_op), _key)


def _unavailable_reason() -> str | None:
    if not HAS_TRITON:
        return "Triton is not installed"
    if INTERPRETER or torch.cuda.is_available():
        return None
    return "no GPU for Triton (TRITON_INTERPRET=1 runs it on the CPU, slowly)"


_REASON = _unavailable_reason()


class TritonBackend(OpsBackend):
    name = "triton"
    packed_family = PACKED
    gated_family = GATED

    def unavailable_reason(self) -> str | None:
        return _REASON

    def unsupported_reason(self, device: torch.device) -> str | None:
        if device.type == "cuda" or (device.type == "cpu" and INTERPRETER):
            return None
        if device.type == "cpu":
            return "Triton runs GPU tensors; got a CPU tensor (TRITON_INTERPRET=1 runs those)"
        return f"the 'triton' backend runs CUDA and ROCm tensors; got a {device.type} tensor"
