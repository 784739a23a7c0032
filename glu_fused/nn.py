"""Modules over the fused functions."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks, functional


class GLU(nn.Module):
    """A drop-in for ``torch.nn.GLU``: ``x1 * sigmoid(x2)`` along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.glu(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SwiGLU(GLU):
    """``silu(x1) * x2`` along ``dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.swiglu(x, self.dim)


class ReGLU(GLU):
    """``relu(x1) * x2`` along ``dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.reglu(x, self.dim)


class GeGLU(GLU):
    """``gelu(x1, approximate) * x2`` along ``dim``."""

    def __init__(self, dim: int = -1, approximate: str = "none") -> None:
        _checks.check_approximate(approximate)
        super().__init__(dim)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.geglu(x, self.dim, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, approximate={self.approximate!r}"


def _fused_activation(activation: str):
    """The fused function of a packed [gate | up] projection for `activation`."""
    _checks.check_activation(activation)
    if activation == "silu":
        return functional.swiglu
    if activation == "gelu":
        return functional.geglu
    if activation == "gelu_tanh":
        return lambda x: functional.geglu(x, approximate="tanh")
    if activation == "relu":
        return functional.reglu
    return lambda x: functional.gated(*x.chunk(2, dim=-1), activation)


class GatedMLP(nn.Module):
    """The LLaMA-style feed-forward ``down(act(gate(x)) * up(x))``.

    ``gate`` and ``up`` are one fused projection, ``gate_up``, whose output rows are
    ``[gate | up]``; that output goes straight into the fused activation, which reads both
    halves in place.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        activation: str = "silu",
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        self._act = _fused_activation(activation)
        factory = {"device": device, "dtype": dtype}
        self.gate_up = nn.Linear(in_features, 2 * hidden_features, bias=bias, **factory)
        self.down = nn.Linear(hidden_features, out_features or in_features, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self._act(self.gate_up(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
