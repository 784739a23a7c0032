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

from typing import TypedDict

import torch
from typing_extensions import Unpack

from . import _checks, _fp8, backends
from ._extension import _C
from ._table import DEFAULT_ALPHA, DEFAULT_LIMIT


def _python_route_only(*args) -> object:
    return NotImplemented


_fast_packed = _python_route_only if _C is None else _C.packed_forward
_fast_gated = _python_route_only if _C is None else _C.gated_forward
_is_compiling = torch.compiler.is_compiling


class Fp8Options(TypedDict, total=False):
    """The FP8 output's options, with `out_dtype` an FP8 type (docs/contract.md, "FP8
    output"): `granularity` "tensor" (static with `scale=`), "token" (the default without
    one), "group" (1 x `group_size`, 128 or 64) or "mx" (1 x 32); `scale_dtype` float32,
    float8_e8m0fnu or int32 (E8M0 packed four to a word); `scale_rounding` "ceil" or
    "floor" (power-of-two scales); `scale_layout` "row" or "column"; `intermediate`
    "input" (the activation rounded to x's dtype first, as the unfused code) or "float32";
    `eps` (1e-10); `scale`, a static one-element float32 tensor."""

    granularity: str
    group_size: int
    scale_dtype: torch.dtype
    scale_rounding: str
    scale_layout: str
    intermediate: str
    eps: float
    scale: torch.Tensor


# A plain result, or (q, scale) with an FP8 out_dtype.
Result = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _fp8_op_args(
    tensors: tuple[torch.Tensor, ...], out_dtype: torch.dtype | None, options: dict
) -> tuple | None:
    """None for a plain call; else the FP8 ops' trailing arguments, the keywords checked."""
    x = tensors[0]
    unexpected = sorted(set(options) - set(_fp8.OPTION_NAMES))
    if unexpected:
        raise TypeError(f"glu_fused: unexpected keyword argument(s) {', '.join(unexpected)}")
    if out_dtype is None or out_dtype == x.dtype:
        if options:
            raise ValueError(
                f"glu_fused: {', '.join(sorted(options))} apply to an FP8 out_dtype "
                f"(torch.float8_e4m3fn, ...), got out_dtype={out_dtype}"
            )
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            "glu_fused: an FP8 result cannot carry a gradient (autograd would cast it to FP8), "
            "so a call with out_dtype FP8 does not record a graph: run it under "
            "torch.no_grad() or torch.inference_mode(); to train with an FP8 down "
            "projection, use glu_fused.nn.GatedMLP(..., fp8='token'), whose backward runs "
            "in the input's dtype"
        )
    scale = options.get("scale")
    args = _fp8.resolve(out_dtype, **options)
    return (*args.as_op_args(), scale)


def _device_type(t: object, name: str) -> str:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"glu_fused: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t.device.type


def packed(
    x: torch.Tensor,
    dim: int,
    function: str,
    layout: str,
    alpha: float,
    limit: float,
    out_dtype: torch.dtype | None = None,
    fp8: dict | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
) -> Result:
    """The glu_forward op's call: `function` (a name of glu_fused._table.PACKED_FUNCTIONS)
    of `x` split along `dim` in `layout`, by the backend in force; with an FP8 `out_dtype`
    the glu_forward_fp8 op's, `fp8` its options (Fp8Options); `bias` and `valid_tokens` as
    the ops take them."""
    rows = {}
    if bias is not None or valid_tokens is not None:
        rows = {"bias": bias, "valid_tokens": valid_tokens}
    if out_dtype is not None or fp8:
        device_type = _device_type(x, "x")
        op_args = _fp8_op_args((x, *_tensors(bias)), out_dtype, fp8 or {})
        if op_args is not None:
            backend = backends.route(device_type)
            return backend.packed_fp8(x, dim, function, layout, alpha, limit, *op_args, **rows)
    if not rows and not _is_compiling():
        out = _fast_packed(x, dim, function, layout, alpha, limit)
        if out is not NotImplemented:
            return out
    backend = backends.route(_device_type(x, "x"))
    return backend.packed(x, dim, function, layout, alpha, limit, **rows)


def _tensors(*maybe: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in maybe if isinstance(t, torch.Tensor))


def glu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    layout: str = "halves",
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r"""Gated linear unit: :math:`x_1 \cdot \sigma(x_2)`, the same as ``F.glu``.

    Args:
        x: the packed input; its size along ``dim`` is even.
        dim: the dim to split (negative counts from the end).
        layout: ``"halves"`` or ``"interleaved"``.
        out_dtype: None (x's dtype), or an FP8 type: the result quantized in the same
            pass, returned as ``(q, scale)`` with ``q * scale`` approximating it
            (``fp8``: the options of :class:`Fp8Options`). Every function takes these.
        bias: None, or a ``[size along dim]`` tensor in x's layout (x's dtype and device),
            added to x in float32 (float64 for float64), unrounded, before the function:
            ``function(x + bias)``; x must be split along its last dim. Its gradient is
            fused into the backward.
        valid_tokens: None, or int32 ``[E]`` for x ``[E, T, 2H]``: only the first
            ``valid_tokens[e]`` rows of expert ``e`` are read and written; the result's
            other rows are left unwritten, the input gradient's are zero.

    Example:
        >>> glu_fused.glu(torch.randn(4, 8)).shape
        torch.Size([4, 4])
    """
    return packed(
        x, dim, "glu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT, out_dtype, fp8, bias, valid_tokens
    )


def swiglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    layout: str = "halves",
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r"""SwiGLU: :math:`\mathrm{silu}(x_1) \cdot x_2`, with
    :math:`\mathrm{silu}(a) = a \, \sigma(a)`."""
    return packed(
        x, dim, "swiglu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT, out_dtype, fp8, bias, valid_tokens
    )


def geglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    approximate: str = "none",
    layout: str = "halves",
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r"""GeGLU: :math:`\mathrm{gelu}(x_1) \cdot x_2`.

    ``approximate="none"``: :math:`\mathrm{gelu}(a) = \tfrac{a}{2}(1 + \mathrm{erf}(a/\sqrt{2}))`;
    ``"tanh"``: :math:`\tfrac{a}{2}(1 + \tanh(\sqrt{2/\pi}\,(a + 0.044715 a^3)))`.
    """
    function = _checks.geglu_function(approximate)
    return packed(
        x, dim, function, layout, DEFAULT_ALPHA, DEFAULT_LIMIT, out_dtype, fp8, bias, valid_tokens
    )


def reglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    layout: str = "halves",
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r"""ReGLU: :math:`\max(x_1, 0) \cdot x_2`."""
    return packed(
        x, dim, "reglu", layout, DEFAULT_ALPHA, DEFAULT_LIMIT, out_dtype, fp8, bias, valid_tokens
    )


def clamped_swiglu(
    x: torch.Tensor,
    dim: int = -1,
    *,
    alpha: float = DEFAULT_ALPHA,
    limit: float = DEFAULT_LIMIT,
    layout: str = "interleaved",
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r"""The clamped SwiGLU of gpt-oss.

    :math:`g = \min(x_1, \mathrm{limit})`, :math:`l = \mathrm{clamp}(x_2, -\mathrm{limit},
    \mathrm{limit})`, result :math:`g \, \sigma(\alpha g) \, (l + 1)`. Interleaved by default,
    as gpt-oss packs its gate and up projections.
    """
    return packed(
        x, dim, "clamped_swiglu", layout, alpha, limit, out_dtype, fp8, bias, valid_tokens
    )


def gated(
    gate: torch.Tensor,
    value: torch.Tensor,
    activation: str = "silu",
    *,
    out_dtype: torch.dtype | None = None,
    gate_bias: torch.Tensor | None = None,
    value_bias: torch.Tensor | None = None,
    valid_tokens: torch.Tensor | None = None,
    **fp8: Unpack[Fp8Options],
) -> Result:
    r""":math:`\mathrm{act}(\mathrm{gate} + b_g) \cdot (\mathrm{value} + b_v)` for two tensors
    of one shape.

    ``activation`` is ``"sigmoid"``, ``"silu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"relu"``.
    With an FP8 ``out_dtype``, ``(q, scale)`` as for the packed functions. ``gate_bias`` and
    ``value_bias`` (``[gate.shape[-1]]`` each, either or both) and ``valid_tokens`` (gate and
    value ``[E, T, H]``) as the packed functions' ``bias`` and ``valid_tokens``.
    """
    rows = {}
    if gate_bias is not None or value_bias is not None or valid_tokens is not None:
        rows = {"gate_bias": gate_bias, "value_bias": value_bias, "valid_tokens": valid_tokens}
    if out_dtype is not None or fp8:
        device_type = _device_type(gate, "gate")
        _device_type(value, "value")
        op_args = _fp8_op_args((gate, value, *_tensors(gate_bias, value_bias)), out_dtype, fp8)
        if op_args is not None:
            backend = backends.route(device_type)
            return backend.gated_fp8(gate, value, activation, *op_args, **rows)
    if not rows and not _is_compiling():
        out = _fast_gated(gate, value, activation)
        if out is not NotImplemented:
            return out
    return backends.route(_device_type(gate, "gate")).gated(gate, value, activation, **rows)
