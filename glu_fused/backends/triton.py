"""The "triton" backend: the Triton kernels (glu_fused/_triton), the portable GPU path and
the "triton" op family. The family's ops are defined by the compiled extension, which also
plans each call; Triton itself is imported at the first call, not with glu_fused."""

from __future__ import annotations

import torch

from .._extension import _C, UNAVAILABLE
from .._triton import HAS_TRITON, INTERPRETER
from .base import OpsBackend

if HAS_TRITON and _C is not None:
    from .._triton import ops  # noqa: F401  (registers the family's implementations)


def _unavailable_reason() -> str | None:
    if not HAS_TRITON:
        return "Triton is not installed"
    if _C is None:
        return f"its ops are defined by the compiled extension, and {UNAVAILABLE}"
    if INTERPRETER or torch.cuda.is_available():
        return None
    return "no GPU for Triton (TRITON_INTERPRET=1 runs it on the CPU, slowly)"


_REASON = _unavailable_reason()


class TritonBackend(OpsBackend):
    name = "triton"
    family = "triton"

    def unavailable_reason(self) -> str | None:
        return _REASON

    def unsupported_reason(self, device_type: str) -> str | None:
        if device_type == "cuda" or (device_type == "cpu" and INTERPRETER):
            return None
        if device_type == "cpu":
            return "Triton runs GPU tensors; got a CPU tensor (TRITON_INTERPRET=1 runs those)"
        return f"the 'triton' backend runs CUDA and ROCm tensors; got a {device_type} tensor"
