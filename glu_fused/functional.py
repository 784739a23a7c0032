"""The public functions. Each checks its arguments, picks a backend and runs it.

`x` is the packed projection output: both halves lie along `dim`. With layout="halves",
x1 is the first half and x2 the second; with layout="interleaved", x1 is the even positions
and x2 the odd ones. The result is contiguous, of x's dtype and device, with x's shape but
`dim` halved. Arithmetic runs in float32 (float64 for float64 inputs), rounded once.
"""

from __future__ import annotations

import torch

from . import _checks, backends
from .reference import DEFAULT_ALPHA, DEFAULT_LIMIT


def _packed(
    x: torch.Tensor,
    dim: int,
    function: str,
    layout: str,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
) -> torch.Tensor:
    dim, interleaved = _checks.packed_args(x, dim, layout)
    backend = backends.select(x.device)
    return backend.packed(x, dim, function, interleaved, float(alpha), float(limit))


def glu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    r"""Gated linear unit: :math:`x_1 \cdot \sigma(x_2)`, the same as ``F.glu``.

    Args:
        x: the packed input; its size along ``dim`` is even.
        dim: the dim to split (negative counts from the end).
        layout: ``"halves"`` or ``"interleaved"``.

    Example:
        >>> glu_fused.glu(torch.randn(4, 8)).shape
        torch.Size([4, 4])
    """
    return _packed(x, dim, "glu", layout)


def swiglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    r"""SwiGLU: :math:`\mathrm{silu}(x_1) \cdot x_2`, with
    :math:`\mathrm{silu}(a) = a \, \sigma(a)`."""
    return _packed(x, dim, "swiglu", layout)


def geglu(
    x: torch.Tensor, dim: int = -1, *, approximate: str = "none", layout: str = "halves"
) -> torch.Tensor:
    r"""GeGLU: :math:`\mathrm{gelu}(x_1) \cdot x_2`.

    ``approximate="none"``: :math:`\mathrm{gelu}(a) = \tfrac{a}{2}(1 + \mathrm{erf}(a/\sqrt{2}))`;
    ``"tanh"``: :math:`\tfrac{a}{2}(1 + \tanh(\sqrt{2/\pi}\,(a + 0.044715 a^3)))`.
    """
    _checks.check_approximate(approximate)
    return _packed(x, dim, "geglu_tanh" if approximate == "tanh" else "geglu", layout)


def reglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    r"""ReGLU: :math:`\max(x_1, 0) \cdot x_2`."""
    return _packed(x, dim, "reglu", layout)


def clamped_swiglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
    layout: str = "interleaved",
) -> torch.Tensor:
    r"""The clamped SwiGLU of gpt-oss.

    :math:`g = \min(x_1, \mathrm{limit})`, :math:`l = \mathrm{clamp}(x_2, -\mathrm{limit},
    \mathrm{limit})`, result :math:`g \, \sigma(\alpha g) \, (l + 1)`. Interleaved by default,
    as gpt-oss packs its gate and up projections.
    """
    return _packed(x, dim, "clamped_swiglu", layout, alpha, limit)


def gated(gate: torch.Tensor, value: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    r""":math:`\mathrm{act}(\mathrm{gate}) \cdot \mathrm{value}` for two tensors of one shape.

    ``activation`` is ``"sigmoid"``, ``"silu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"relu"``.
    """
    _checks.check_gate_value(gate, value)
    _checks.check_activation(activation)
    return backends.select(gate.device).gated(gate, value, activation)
