"""The backends and the one point that picks among them.

Each backend is a small provider (base.py) that says whether this process can use it,
whether it runs a given device type's tensors, and runs the two kinds of call. The choice
for a device type is made once per mode (the backend forced by `use_backend`, else
$GLU_FUSED_BACKEND's, else "auto") and kept: `route` returns it, and tells the extension's
fast calls (glu_fused._C.set_route), so that later calls on that device type go from the
public function to the backend's op with no Python in between.

"auto": CPU tensors use "cpu" when the extension was built, else "reference"; CUDA tensors
"cuda" when its CUDA kernels were built, else "triton", else "reference"; other devices
"triton" where it runs them, else "reference".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .._extension import _C
from .base import Backend
from .extension import CpuBackend, CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (CudaBackend(), TritonBackend(), CpuBackend(), ReferenceBackend())
}
CHOICES = ("auto", *BACKENDS)
ENV_VAR = "GLU_FUSED_BACKEND"
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}
_OTHER_DEVICES_ORDER = ("triton", "reference")
# Device types routed whenever the mode changes, so that torch.compile's tracing of a call
# only reads the routes.
_SETTLED_UP_FRONT = ("cpu", "cuda", "meta")


def _checked_name(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(
            f"glu_fused: unknown backend {name!r} ({source}); expected one of {CHOICES}"
        )
    return name


_default = _checked_name(os.environ.get(ENV_VAR, "auto").strip() or "auto", f"${ENV_VAR}")
_forced: str | None = None
# Device type -> the backend that runs its calls in this mode, or why none can.
_routes: dict[str, Backend | str] = {}


def available_backends() -> list[str]:
    """The backends this process can use, in the order "auto" prefers them."""
    return [name for name, b in BACKENDS.items() if b.unavailable_reason() is None]


def backend_status() -> dict[str, str]:
    """Every backend with "available" (the CPU's: "available (avx512 kernels)", the SIMD level
    in use) or the reason it is not."""
    return {name: _status(b) for name, b in BACKENDS.items()}


def _status(backend: Backend) -> str:
    reason = backend.unavailable_reason()
    if reason is not None:
        return reason
    detail = getattr(backend, "detail", None)
    return f"available ({detail()})" if detail is not None else "available"


def current_backend() -> str:
    """The backend name in force: use_backend's, else $GLU_FUSED_BACKEND's, else "auto"."""
    return _forced or _default


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Forces `name` ("auto", "cuda", "triton", "cpu" or "reference") inside the block."""
    global _forced
    previous = _forced
    _forced = _checked_name(name, "use_backend")
    _new_mode()
    try:
        yield
    finally:
        _forced = previous
        _new_mode()


def _resolve(device_type: str) -> Backend | str:
    name = current_backend()
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device_type, _OTHER_DEVICES_ORDER):
            backend = BACKENDS[candidate]
            if backend.unavailable_reason() is None and not backend.unsupported_reason(device_type):
                return backend
        return BACKENDS["reference"]
    backend = BACKENDS[name]
    reason = backend.unavailable_reason() or backend.unsupported_reason(device_type)
    if reason is not None:
        return f"glu_fused: backend {name!r} cannot run this call: {reason}"
    return backend


def _settle(device_type: str) -> Backend | str:
    found = _resolve(device_type)
    _routes[device_type] = found
    if _C is not None:
        family = None if isinstance(found, str) else found.family
        with contextlib.suppress(RuntimeError, ValueError):  # a type the extension cannot name
            _C.set_route(device_type, family)
    return found


def _new_mode() -> None:
    _routes.clear()
    if _C is not None:
        _C.clear_routes()
    for device_type in _SETTLED_UP_FRONT:
        _settle(device_type)


def route(device_type: str) -> Backend:
    """The backend that runs calls on `device_type` tensors; RuntimeError if the forced
    one cannot."""
    found = _routes.get(device_type)
    if found is None:
        found = _settle(device_type)
    if isinstance(found, str):
        raise RuntimeError(found)
    return found


def select(device: torch.device | str) -> Backend:
    """The backend that runs a call on `device`."""
    return route(torch.device(device).type)


_new_mode()
