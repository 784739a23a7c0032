"""The public functions: the front door to the fused ops.

`x` is the packed projection output: both halves lie along `dim`. With layout="halves",
x1 is the first half and x2 the second; with layout="interleaved", x1 is the even positions
and x2 the odd ones. The result is contiguous, of x's dtype and device, with x's shape but
`dim` halved. Arithmetic runs in float32 (float64 for float64 inputs), rounded once.

Each function hands its arguments, as the op takes them, to the extension's fast call
(glu_fused._C.packed_forward / gated_forward), which runs the op of the backend routed for
the tensor's device: checks, autograd and kernels are all C++ from there. What that call
leaves to Python (it answers NotImplemented: a backend without ops, forward-mode AD,
torch.func, __torch_function__, a device not yet routed) and torch.compile's tracing take
the Python route: the backend chosen by glu_fused.backends.route.
"""

from __future__ import annotations

import torch

from . import _checks, backends
from ._extension import _C
from ._table import DEFAULT_ALPHA, DEFAULT_LIMIT


def _python_route_only(*args) -> object:
    return NotImplemented


_fast_packed = _python_route_only if _C is None else _C.packed_forward
_fast_gated = _python_route_only if _C is None else _C.gated_forward
_is_compiling = torch.compiler.is_compiling


def _device_type(t: object, name: str) -> str:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"glu_fused: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t.device.type


def packed(
    x: torch.Tensor, dim: int, function: str, layout: str, alpha: float, limit: float
) -> torch.Tensor:
    """The glu_forward op's call: `function` (a name of glu_fused._table.PACKED_FUNCTIONS)
    of `x` split along `dim` in `layout`, by the backend in force."""
    if not _is_compiling():
        out = _fast_packed(x, dim, function, layout, alpha, limit)
        if out is not NotImplemented:
            return out
    return backends.route(_device_type(x, "x")).packed(x, dim, function, layout, alpha, limit)


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
    return packed(x, dim, "glu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT)


def swiglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    r"""SwiGLU: :math:`\mathrm{silu}(x_1) \cdot x_2`, with
    :math:`\mathrm{silu}(a) = a \, \sigma(a)`."""
    return packed(x, dim, "swiglu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT)


def geglu(
    x: torch.Tensor, dim: int = -1, *, approximate: str = "none", layout: str = "halves"
) -> torch.Tensor:
    r"""GeGLU: :math:`\mathrm{gelu}(x_1) \cdot x_2`.

    ``approximate="none"``: :math:`\mathrm{gelu}(a) = \tfrac{a}{2}(1 + \mathrm{erf}(a/\sqrt{2}))`;
    ``"tanh"``: :math:`\tfrac{a}{2}(1 + \tanh(\sqrt{2/\pi}\,(a + 0.044715 a^3)))`.
    """
    function = _checks.geglu_function(approximate)
    return packed(x, dim, function, layout, DEFAULT_ALPHA, DEFAULT_LIMIT)


def reglu(x: torch.Tensor, dim: int = -1, *, layout: str = "halves") -> torch.Tensor:
    r"""ReGLU: :math:`\max(x_1, 0) \cdot x_2`."""
    return packed(x, dim, "reglu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT)


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
    return packed(x, dim, "clamped_swiglu", layout, alpha, limit)


def gated(gate: torch.Tensor, value: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    r""":math:`\mathrm{act}(\mathrm{gate}) \cdot \mathrm{value}` for two tensors of one shape.

    ``activation`` is ``"sigmoid"``, ``"silu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"relu"``.
    """
    if not _is_compiling():
        out = _fast_gated(gate, value, activation)
        if out is not NotImplemented:
            return out
    return backends.route(_device_type(gate, "gate")).gated(gate, value, activation)
