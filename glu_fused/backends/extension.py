"""The "cpu" and "cuda" backends: the compiled extension's kernels (glu_fused._C), the
"native" op family."""

from __future__ import annotations

import torch

from .._extension import _C, UNAVAILABLE
from .base import OpsBackend

# torch's names for the SIMD levels, lowest first.
_CPU_LEVELS = ("default", "avx2", "avx512")


def built_cpu_capability() -> str | None:
    """The SIMD level the CPU kernels were compiled for, or None without an extension."""
    return None if _C is None else _C.CPU_CAPABILITY


def _cpu_reason() -> str | None:
    if _C is None:
        return UNAVAILABLE
    built = _C.CPU_CAPABILITY
    here = torch.backends.cpu.get_cpu_capability().lower()
    if built in _CPU_LEVELS and here in _CPU_LEVELS:
        if _CPU_LEVELS.index(built) > _CPU_LEVELS.index(here):
            return (
                f"the CPU kernels were built for {built} but this CPU runs {here}; "
                "rebuild with GLU_FUSED_CPU_CAPABILITY=default"
            )
    return None


def _cuda_reason() -> str | None:
    if _C is None:
        return UNAVAILABLE
    if not _C.WITH_CUDA:
        return "the extension was built without CUDA kernels (no nvcc or a CPU-only torch)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    return None


# Decided once, at import: the hot path (and torch.compile's tracing) only reads them.
_CPU_REASON = _cpu_reason()
_CUDA_REASON = _cuda_reason()


class _ExtensionBackend(OpsBackend):
    device_type: str
    family = "native"

    def unsupported_reason(self, device_type: str) -> str | None:
        if device_type != self.device_type:
            return (
                f"the {self.name!r} backend runs {self.device_type} tensors; "
                f"got a {device_type} tensor"
            )
        return None


class CpuBackend(_ExtensionBackend):
    name = "cpu"
    device_type = "cpu"

    def unavailable_reason(self) -> str | None:
        return _CPU_REASON


class CudaBackend(_ExtensionBackend):
    name = "cuda"
    device_type = "cuda"

    def unavailable_reason(self) -> str | None:
        return _CUDA_REASON
