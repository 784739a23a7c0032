"""The "cpu" and "cuda" backends: the compiled extension's kernels (glu_fused._C), the
"native" op family."""

from __future__ import annotations

import torch

from .._extension import _C, UNAVAILABLE
from .base import OpsBackend


def cpu_capability() -> str | None:
    """The SIMD level of the CPU kernels in use ("default", "avx2", "avx512"), chosen at load
    from torch's (ATEN_CPU_CAPABILITY moves both); "none" where the one level built is above
    it; None without an extension."""
    return None if _C is None else _C.CPU_CAPABILITY


def built_cpu_levels() -> tuple[str, ...]:
    """The SIMD levels the CPU kernels were compiled for, lowest first."""
    return () if _C is None else tuple(_C.CPU_LEVELS.split(","))


# The CPU kernels' SIMD levels, lowest first (build_config.CPU_CAPABILITIES).
CPU_LEVELS = ("default", "avx2", "avx512")


def torch_cpu_levels() -> tuple[str, ...]:
    """The levels this process's torch runs, lowest first (ATEN_CPU_CAPABILITY caps them)."""
    here = torch.backends.cpu.get_cpu_capability().lower()
    return CPU_LEVELS[: CPU_LEVELS.index(here) + 1] if here in CPU_LEVELS else CPU_LEVELS[:1]


def runnable_cpu_levels() -> tuple[str, ...]:
    """The levels built that this process's torch runs."""
    return tuple(level for level in built_cpu_levels() if level in torch_cpu_levels())


def _cpu_reason() -> str | None:
    if _C is None:
        return UNAVAILABLE
    if _C.CPU_CAPABILITY == "none":
        here = torch.backends.cpu.get_cpu_capability().lower()
        return (
            f"the CPU kernels were built for {_C.CPU_LEVELS} alone (GLU_FUSED_CPU_CAPABILITY) "
            f"and torch runs {here} here; rebuild without GLU_FUSED_CPU_CAPABILITY, which "
            "builds every level"
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

    def detail(self) -> str:
        return f"{cpu_capability()} kernels"


class CudaBackend(_ExtensionBackend):
    name = "cuda"
    device_type = "cuda"

    def unavailable_reason(self) -> str | None:
        return _CUDA_REASON
