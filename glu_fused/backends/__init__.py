"""The backends and the one point that picks among them.

Each backend is a small provider (see base.py) that says whether this process can use it,
whether it can run a given device's tensors, and runs the two op families. `select`
resolves "auto" by the SPEC's rule, or checks the forced backend and says why it cannot run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .base import Backend
from .extension import CpuBackend, CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (CudaBackend(), TritonBackend(), CpuBackend(), ReferenceBackend())
}
CHOICES = ("auto", *BACKENDS)
ENV_VAR = "GLU_FUSED_BACKEND"


def _checked_name(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(
            f"glu_fused: unknown backend {name!r} ({source}); expected one of {CHOICES}"
        )
    return name


_default = _checked_name(os.environ.get(ENV_VAR, "auto").strip() or "auto", f"${ENV_VAR}")
_forced: str | None = None


def available_backends() -> list[str]:
    """The backends this process can use, in the order "auto" prefers them."""
    return [name for name, b in BACKENDS.items() if b.unavailable_reason() is None]


def backend_status() -> dict[str, str]:
    """Every backend with "available" or the reason it is not."""
    return {name: b.unavailable_reason() or "available" for name, b in BACKENDS.items()}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Forces `name` ("auto", "cuda", "triton", "cpu" or "reference") inside the block."""
    global _forced
    previous = _forced
    _forced = _checked_name(name, "use_backend")
    try:
        yield
    finally:
        _forced = previous


def current_backend() -> str:
    """The backend name in force: use_backend's, else $GLU_FUSED_BACKEND's, else "auto"."""
    return _forced or _default


def _auto(device: torch.device) -> Backend:
    if device.type == "cpu":
        order = ("cpu", "reference")
    elif device.type == "cuda":
        order = ("cuda", "triton", "reference")
    else:
        order = ("triton", "reference")
    for name in order:
        backend = BACKENDS[name]
        if backend.unavailable_reason() is None and backend.unsupported_reason(device) is None:
            return backend
    return BACKENDS["reference"]


def select(device: torch.device) -> Backend:
    """The backend that runs a call on `device`; RuntimeError if the forced one cannot."""
    name = current_backend()
    if name == "auto":
        return _auto(device)
    backend = BACKENDS[name]
    reason = backend.unavailable_reason() or backend.unsupported_reason(device)
    if reason is not None:
        raise RuntimeError(f"glu_fused: backend {name!r} cannot run this call: {reason}")
    return backend
