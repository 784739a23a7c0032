"""Fused GLU-family activations for PyTorch: one pass over memory, forward and backward.

>>> import torch, glu_fused
>>> y = glu_fused.swiglu(torch.randn(8, 2 * 1024))   # silu(x1) * x2, shape (8, 1024)
"""

from . import _table, nn, reference
from .backends import available_backends, backend_status, current_backend, use_backend
from .functional import clamped_swiglu, gated, geglu, glu, reglu, swiglu

__version__ = "0.1.0"

# The activations of `gated` and of `nn.GatedMLP`.
ACTIVATIONS: tuple[str, ...] = tuple(_table.GATE_ACTIVATIONS)

__all__ = [
    "ACTIVATIONS",
    "available_backends",
    "backend_status",
    "clamped_swiglu",
    "current_backend",
    "gated",
    "geglu",
    "glu",
    "nn",
    "reference",
    "reglu",
    "swiglu",
    "use_backend",
]
