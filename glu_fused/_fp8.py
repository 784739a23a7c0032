"""FP8 output: the quantization rule in plain PyTorch, and its options checked.

The rule, written once (docs/contract.md, "FP8 output"); the kernels compute the same in
csrc/glu_math.h (Fp8Rule) and are held to this code bit for bit:

    y      the activation, rounded to the input's dtype (intermediate="input") or kept
           in float32 (intermediate="float32"), as float32
    amax   max |y| over a block (a tensor, a row, 1 x group_size along the last dim);
           a NaN in the block makes it NaN
    s      max(amax, eps) / FP8_MAX by IEEE float32 division (scale_dtype float32), or a
           power of two: 2^ceil(log2 s) ("ceil") or 2^(floor(log2 max(amax, eps)) - emax)
           ("floor", the OCP MX rule; emax the FP8 type's largest exponent)
    r      1 / s, IEEE division, once per block
    q      y * r in float32, saturated to +-FP8_MAX (NaN stays NaN), rounded half to even

A static scale (granularity "tensor", `scale=` given) is s itself. `s` is the
dequantization scale: q * s approximates y, as torch._scaled_mm, vLLM and DeepGEMM take it.
Scales are float32, float8_e8m0fnu, or int32 with four E8M0 bytes (the first block in the
lowest byte, a short last word padded with zero bytes) as DeepGEMM's SM100 kernels take
them. The "column" layout stores the same logical [..., n_blocks] tensor token-major: stride
1 along the tokens, whose count is padded to a multiple of 4 (DeepGEMM's TMA-aligned layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import _unknown

# FP8 types: their largest finite value and the exponent of their largest power of two.
FP8_FORMATS: dict[torch.dtype, tuple[float, int]] = {
    torch.float8_e4m3fn: (448.0, 8),
    torch.float8_e5m2: (57344.0, 15),
}
for _name, _fmt in (("float8_e4m3fnuz", (240.0, 7)), ("float8_e5m2fnuz", (57344.0, 15))):
    if hasattr(torch, _name):  # ROCm's types, where this torch has them
        FP8_FORMATS[getattr(torch, _name)] = _fmt

GRANULARITIES = ("tensor", "token", "group", "mx")
GROUP_SIZES = (64, 128)
MX_BLOCK = 32
SCALE_DTYPES = (torch.float32, torch.float8_e8m0fnu, torch.int32)
SCALE_ROUNDINGS = ("ceil", "floor")
SCALE_LAYOUTS = ("row", "column")
INTERMEDIATES = ("input", "float32")
# vLLM's and SGLang's per-token-group quantizers use 1e-10: an all-zero block gets a tiny
# scale and quantizes to zeros, while any real block keeps its own amax (DeepGEMM's 1e-4
# would coarsen every block whose amax is below it).
DEFAULT_EPS = 1e-10
_TOKEN_PAD = 4


@dataclass(frozen=True)
class Fp8Args:
    """The FP8 arguments as the ops take them (after `resolve` filled the defaults)."""

    out_dtype: torch.dtype
    granularity: str
    group_size: int  # the block along the last dim: 64 or 128 (group), 32 (mx), 0 otherwise
    scale_dtype: torch.dtype
    scale_rounding: str
    scale_layout: str
    intermediate: str
    eps: float

    def as_op_args(self) -> tuple:
        return (
            self.out_dtype,
            self.granularity,
            self.group_size,
            self.scale_dtype,
            self.scale_rounding,
            self.scale_layout,
            self.intermediate,
            self.eps,
        )


def is_fp8(dtype: object) -> bool:
    return dtype in FP8_FORMATS


def resolve(
    out_dtype: torch.dtype,
    granularity: str | None = None,
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
    scale_rounding: str | None = None,
    scale_layout: str = "row",
    intermediate: str = "input",
    eps: float | None = None,
    scale: torch.Tensor | None = None,
) -> Fp8Args:
    """The public keywords' defaults filled in, and the choices that only the keywords can
    get wrong (an option given where it does not apply) refused."""
    if granularity is None:
        granularity = "tensor" if scale is not None else "token"
    if granularity == "group":
        group_size = 128 if group_size is None else group_size
    elif group_size is not None:
        raise ValueError(
            f"glu_fused: group_size applies to granularity='group', got granularity={granularity!r}"
        )
    elif granularity == "mx":
        group_size = MX_BLOCK
    else:
        group_size = 0
    if scale_dtype is None:
        scale_dtype = torch.float8_e8m0fnu if granularity == "mx" else torch.float32
    if scale_rounding is None:
        scale_rounding = "ceil"
    elif scale_dtype == torch.float32:
        raise ValueError(
            "glu_fused: scale_rounding applies to power-of-two scales "
            "(scale_dtype torch.float8_e8m0fnu or torch.int32)"
        )
    eps = DEFAULT_EPS if eps is None else eps
    return Fp8Args(
        out_dtype,
        granularity,
        group_size,
        scale_dtype,
        scale_rounding,
        scale_layout,
        intermediate,
        float(eps),
    )


def check(args: Fp8Args, out_shape, dim: int, static_scale: torch.Tensor | None, device) -> None:
    """The ops' FP8 checks (csrc/glu_plan.cpp, check_fp8), in their order and words:
    `out_shape` is the result's, `dim` (non-negative) the one halved."""
    if dim != len(out_shape) - 1:
        raise ValueError(
            f"glu_fused: FP8 output is quantized along the last dim; split along it, got dim {dim}"
        )
    last = out_shape[-1]
    if not is_fp8(args.out_dtype):
        names = ", ".join(str(d) for d in FP8_FORMATS)
        raise TypeError(
            f"glu_fused: out_dtype must be the input's dtype or an FP8 type ({names}), "
            f"got {args.out_dtype}"
        )
    if args.granularity not in GRANULARITIES:
        raise _unknown("granularity", args.granularity, GRANULARITIES)
    if args.scale_rounding not in SCALE_ROUNDINGS:
        raise _unknown("scale_rounding", args.scale_rounding, SCALE_ROUNDINGS)
    if args.scale_layout not in SCALE_LAYOUTS:
        raise _unknown("scale_layout", args.scale_layout, SCALE_LAYOUTS)
    if args.intermediate not in INTERMEDIATES:
        raise _unknown("intermediate", args.intermediate, INTERMEDIATES)
    block = args.group_size
    if args.granularity == "group" and block not in GROUP_SIZES:
        raise ValueError(f"glu_fused: group_size must be 64 or 128, got {block}")
    if args.granularity == "mx" and block != MX_BLOCK:
        raise ValueError(f"glu_fused: granularity 'mx' takes blocks of 32, got {block}")
    if args.granularity in ("tensor", "token") and block != 0:
        raise ValueError(f"glu_fused: granularity {args.granularity!r} takes no group_size")
    if args.scale_dtype not in SCALE_DTYPES:
        raise TypeError(
            "glu_fused: scale_dtype must be torch.float32, torch.float8_e8m0fnu or "
            f"torch.int32, got {args.scale_dtype}"
        )
    if args.granularity == "mx" and args.scale_dtype == torch.float32:
        raise ValueError("glu_fused: granularity 'mx' has E8M0 scales, not torch.float32")
    if args.scale_dtype == torch.int32 and args.granularity not in ("group", "mx"):
        raise ValueError(
            "glu_fused: int32 scales pack four blocks' scales; granularity "
            f"{args.granularity!r} has one per row or tensor"
        )
    if args.granularity == "tensor" and args.scale_layout != "row":
        raise ValueError("glu_fused: granularity 'tensor' has one scale: no scale_layout")
    fp8_max = FP8_FORMATS[args.out_dtype][0]
    if not args.eps >= fp8_max * 2.0**-126 or args.eps == float("inf"):
        raise ValueError(
            f"glu_fused: eps must be finite and at least {fp8_max * 2.0**-126:g} "
            f"(so that eps / {fp8_max:g} is a normal float32), got {args.eps:g}"
        )
    if block and last % block:
        raise ValueError(
            f"glu_fused: granularity {args.granularity!r} needs the quantized size to be a "
            f"multiple of {block}, got {last}"
        )
    if static_scale is not None:
        check_static_scale(args, static_scale, device)


def check_static_scale(args: Fp8Args, scale: torch.Tensor, device) -> None:
    if args.granularity != "tensor":
        raise ValueError(
            f"glu_fused: a static scale is one per tensor (granularity 'tensor'), got "
            f"granularity {args.granularity!r}"
        )
    if args.scale_dtype != torch.float32:
        raise ValueError("glu_fused: a static scale is float32: scale_dtype must be float32")
    if scale.dtype != torch.float32 or scale.numel() != 1 or scale.device != device:
        raise ValueError(
            "glu_fused: scale must be a one-element float32 tensor on the input's device, "
            f"got {scale.dtype} of shape {tuple(scale.shape)} on {scale.device}"
        )


# ---- the rule ------------------------------------------------------------------------


def _pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """The power of two at or above s (s positive and normal; NaN and inf kept)."""
    mantissa, exponent = torch.frexp(s)  # s = mantissa * 2^exponent, mantissa in [0.5, 1)
    exact = mantissa == 0.5
    p = torch.ldexp(torch.ones_like(s), torch.where(exact, exponent - 1, exponent))
    return torch.where(torch.isfinite(s), p, s)


def _pow2_floor(m: torch.Tensor, emax: int) -> torch.Tensor:
    """2^(floor(log2 m) - emax) (m positive and normal; NaN and inf kept)."""
    _, exponent = torch.frexp(m)
    p = torch.ldexp(torch.ones_like(m), exponent - 1 - emax)
    return torch.where(torch.isfinite(m), p, m)


def _scales(amax: torch.Tensor, args: Fp8Args) -> torch.Tensor:
    """The float32 dequantization scales of blocks with these amaxes."""
    fp8_max, emax = FP8_FORMATS[args.out_dtype]
    m = torch.maximum(amax, torch.full_like(amax, args.eps))  # NaN propagates
    if args.scale_dtype != torch.float32 and args.scale_rounding == "floor":
        return _pow2_floor(m, emax)
    s = m / torch.full_like(m, fp8_max)  # IEEE division, not a multiplication by 1/448
    return s if args.scale_dtype == torch.float32 else _pow2_ceil(s)


def _store_scales(s: torch.Tensor, args: Fp8Args) -> torch.Tensor:
    """Float32 scales [..., n_blocks] in the scale dtype and layout."""
    if args.scale_dtype != torch.float32:
        s = s.to(torch.float8_e8m0fnu)
        if args.scale_dtype == torch.int32:
            pad = -s.shape[-1] % 4
            raw = s.view(torch.uint8)
            if pad:
                raw = torch.cat([raw, raw.new_zeros(*raw.shape[:-1], pad)], -1)
            s = raw.contiguous().view(torch.int32)
    if args.scale_layout == "column":
        s = to_column_layout(s)
    return s.contiguous() if args.scale_layout == "row" else s


def to_column_layout(s: torch.Tensor) -> torch.Tensor:
    """s [..., n] as the same logical tensor stored token-major: [n, tokens padded to a
    multiple of 4] underneath, stride 1 along the tokens."""
    lead, n = s.shape[:-1], s.shape[-1]
    tokens = s[..., 0].numel()
    padded = tokens + (-tokens % _TOKEN_PAD)
    store = s.new_zeros(n, padded)
    store[:, :tokens] = s.reshape(tokens, n).t()
    strides = [1] * len(lead)
    for i in range(len(lead) - 2, -1, -1):
        strides[i] = strides[i + 1] * lead[i + 1]
    return store.as_strided((*lead, n), (*strides, padded))


def scale_shape(out_shape: tuple[int, ...], args: Fp8Args) -> tuple[int, ...]:
    """The logical shape of the scales of a result of `out_shape`."""
    if args.granularity == "tensor":
        return (1,)
    last = out_shape[-1]
    blocks = 1 if args.granularity == "token" else last // args.group_size
    if args.scale_dtype == torch.int32:
        blocks = -(-blocks // 4)
    return (*out_shape[:-1], blocks)


def quantize(
    y: torch.Tensor, args: Fp8Args, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale): the rule applied to y, the activation as the unfused code has it (already
    rounded to the input's dtype, or float32 for intermediate="float32"); blocks along the
    last dim."""
    fp8_max = FP8_FORMATS[args.out_dtype][0]
    y = y.float().contiguous()
    last = y.shape[-1]
    if args.granularity == "tensor":
        if static_scale is not None:
            s = static_scale.reshape(1).float()
        else:
            amax = y.abs().amax() if y.numel() else y.new_zeros(())
            s = _scales(amax.reshape(1), args)
        blocks = y.reshape(1, -1)
    else:
        if last == 0:  # rows of no elements: amax 0 (a token's one scale, or no groups)
            n = 1 if args.granularity == "token" else 0
            blocks = y.new_zeros(*y.shape[:-1], n, 0)
        else:
            block = last if args.granularity == "token" else args.group_size
            blocks = y.unflatten(-1, (last // block, block))
        amax = blocks.abs().amax(-1) if blocks.numel() else blocks.new_zeros(blocks.shape[:-1])
        s = _scales(amax, args)
    r = torch.ones_like(s) / s
    q = (blocks * r.unsqueeze(-1)).clamp(-fp8_max, fp8_max).to(args.out_dtype).reshape(y.shape)
    if static_scale is not None:
        return q, s.clone()
    return q, _store_scales(s, args)


def dequantize(q: torch.Tensor, scale: torch.Tensor, args: Fp8Args) -> torch.Tensor:
    """q * scale in float32, every block by its scale (int32 scales unpacked)."""
    if scale.dtype == torch.int32:
        scale = scale.contiguous().view(torch.float8_e8m0fnu)[..., : _n_blocks(q, args)]
    s = scale.float()
    if args.granularity == "tensor":
        return q.float() * s.reshape(())
    block = q.shape[-1] if args.granularity == "token" else args.group_size
    return (q.float().unflatten(-1, (-1, block)) * s.unsqueeze(-1)).flatten(-2)


def _n_blocks(q: torch.Tensor, args: Fp8Args) -> int:
    return q.shape[-1] // args.group_size


# ---- the keywords ---------------------------------------------------------------------------

# The public functions' FP8 keywords besides out_dtype (Fp8Options, functional.py).
OPTION_NAMES = (
    "granularity",
    "group_size",
    "scale_dtype",
    "scale_rounding",
    "scale_layout",
    "intermediate",
    "eps",
    "scale",
)


def from_op_args(op_args: tuple) -> tuple[Fp8Args, torch.Tensor | None]:
    """(Fp8Args, static scale) from the ops' trailing arguments."""
    return Fp8Args(*op_args[:-1]), op_args[-1]


# ---- FP8 GEMMs: the weights quantized, torch._scaled_mm ----------------------------------
# torch._scaled_mm scales per tensor or per row (a [M, 1] scale of the first operand with a
# [1, N] one of the second); these are the granularities of the MLP blocks' GEMMs.
GEMM_GRANULARITIES = ("tensor", "token")
WEIGHT_GRANULARITIES = ("tensor", "row")


def check_gemm_granularity(granularity: str) -> None:
    if granularity not in GEMM_GRANULARITIES:
        raise _unknown("FP8 granularity", granularity, GEMM_GRANULARITIES)


def quantize_weight(
    weight: torch.Tensor, granularity: str, out_dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """An [N, K] weight as (q, scale) for the second operand of torch._scaled_mm: q the
    [K, N] column-major transpose, scale (1,) ("tensor") or (1, N) ("row"), by the rule."""
    if granularity not in WEIGHT_GRANULARITIES:
        raise _unknown("weight granularity", granularity, WEIGHT_GRANULARITIES)
    args = resolve(
        out_dtype, "tensor" if granularity == "tensor" else "token", intermediate="float32"
    )
    q, scale = quantize(weight.detach(), args)
    return q.t(), scale.reshape(1, -1) if granularity == "row" else scale


def _cpu_scales_rows() -> bool:
    """Whether this torch's CPU torch._scaled_mm takes per-row scales (torch 2.11's takes
    per-tensor scales only). Asked once, at import, on a tiny GEMM."""
    q = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(q, q.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


_CPU_SCALES_ROWS = _cpu_scales_rows()
_ROWS_AFTER_WARNED: list[bool] = []


def _rows_after(q2, weight_q, a_scale, b_scale, out_dtype) -> torch.Tensor:
    """Per-row scales where _scaled_mm takes per-tensor ones only: the GEMM with unit scales
    in float32, then the scales; said once, as it costs a pass over the output."""
    if not _ROWS_AFTER_WARNED:
        _ROWS_AFTER_WARNED.append(True)
        import warnings

        warnings.warn(
            f"glu_fused: torch {torch.__version__}'s CPU torch._scaled_mm scales per tensor "
            "only; the per-row scales are applied after the GEMM (one more pass over its "
            "output). A newer torch scales inside it.",
            stacklevel=4,
        )
    one = torch.ones(1, device=q2.device)
    out = torch._scaled_mm(q2, weight_q, one, one, out_dtype=torch.float32)
    return (out * a_scale * b_scale).to(out_dtype)


def scaled_linear(
    q: torch.Tensor,
    scale: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """q [..., K] (scale (1,) or [..., 1]) times the quantized weight (quantize_weight's),
    plus bias, in out_dtype: one torch._scaled_mm."""
    lead = q.shape[:-1]
    q2 = q.reshape(-1, q.shape[-1])
    rows = q2.shape[0]
    a_scale, b_scale = scale.reshape(-1, 1) if scale.numel() > 1 else scale, weight_scale
    if a_scale.dim() == 2 or b_scale.dim() == 2:  # per row on either side: both as rows
        a_scale = a_scale.reshape(-1, 1).expand(rows, 1).contiguous()
        b_scale = b_scale.reshape(1, -1).expand(1, weight_q.shape[1]).contiguous()
    if a_scale.dim() == 2 and q2.device.type == "cpu" and not _CPU_SCALES_ROWS:
        out = _rows_after(q2, weight_q, a_scale, b_scale, out_dtype)
    else:
        out = torch._scaled_mm(q2, weight_q, a_scale, b_scale, out_dtype=out_dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight_q.shape[1])
