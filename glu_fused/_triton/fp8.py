"""FP8 output on the Triton backend, fused: the activation and its quantization in one pass.

The activation is the plain forward kernel's (kernels.forward_kernel: the same loads, the
same math.gated_forward, the same rounding to the input's dtype, or none for
intermediate="float32"); each block's scale and q then follow the rule of glu_fused/_fp8.py
bit for bit, in the same program:

  amax   max |y| over the block, taken on the bits of |y| as int32: |y| >= 0 or NaN, so
         the integer max is the float max with NaN winning (as torch.amax propagates it),
         and it is exact and order-free (the per-tensor atomic is deterministic too);
  s      max(amax, eps) / FP8_MAX by IEEE division (tl.math.div_rn: on a GPU Triton's `/`
         on float32 may be approximate), or a power of two made on the float's bits;
  r      1 / s, IEEE division, once per block;
  q      y * r saturated to +-FP8_MAX (NaN kept), encoded round-half-to-even in integer
         arithmetic on the float32's bits (as csrc/cpu/glu_cpu.cpp's fp8_bits) and stored as
         uint8: no float cast to FP8, since the interpreter's casts truncate.

Granularities (the blocks lie along the last, halved dim; the output is taken as
[rows, n] rows of n, each inside one run of the plan's PairLayout):
  * "group" / "mx": a tile holds whole blocks (BLOCK_E a multiple of the block);
  * "token": a row in one tile where it fits (n <= the launcher's tile), else one program
    per row that loops over it twice, for the amax and then (recomputing) for q;
  * "tensor": a static scale is read on the device; a dynamic one takes a first kernel
    (amax_kernel: per-program amax, then tl.atomic_max on an int32 of the float's bits)
    and quantize_kernel reads it, recomputing the activations.
The float32 scales then take their dtype and layout in PyTorch (_fp8._store_scales), as the
rule's own do.

The bias and token counts (csrc/glu_kernels.h, RowOptions; Fp8Call::rows) are the plain
kernels' (kernels.py's HAS_BIAS and MASKED, on the same loads): where the plan sets them every
run is one row of n, the bias is added before the activation, and a row past its group's
count is not read, and neither its q nor its scales are written; a per-tensor amax is over
the valid rows only (the masked lanes' bits are 0).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .. import _fp8, reference
from .._extension import _C
from . import kernels as k
from . import launch
from . import math as m

# Granularity codes (quantize_kernel's GRANULARITY).
TENSOR = tl.constexpr(0)
TOKEN = tl.constexpr(1)
BLOCKS = tl.constexpr(2)
GRANULARITY_CODES = {"tensor": 0, "token": 1, "group": 2, "mx": 2}
# Scale rules (RULE): IEEE float32 division, or its power of two at or above (ceil), or the
# OCP MX floor rule.
FLOAT32 = tl.constexpr(0)
POW2_CEIL = tl.constexpr(1)
POW2_FLOOR = tl.constexpr(2)


def _format(mantissa: int, bias: int, fnuz: bool) -> dict:
    return {"MANTISSA": mantissa, "BIAS": bias, "FNUZ": fnuz}


# The FP8 encodings: mantissa bits, exponent bias, and whether it is a "fnuz" type (NaN is
# 0x80, no negative zero). Their largest value and emax come from _fp8.FP8_FORMATS.
FORMATS = {torch.float8_e4m3fn: _format(3, 7, False), torch.float8_e5m2: _format(2, 15, False)}
for _name, _fmt in (
    ("float8_e4m3fnuz", _format(3, 8, True)),
    ("float8_e5m2fnuz", _format(2, 16, True)),
):
    if hasattr(torch, _name):
        FORMATS[getattr(torch, _name)] = _fmt

_INTEGERS = (
    "rows",
    "n",
    "rows_per_run",
    "runs_per_outer",
    "outer_stride",
    "run_stride",
    "rows_per_group",
)
_POINTERS = ("g_ptr", "v_ptr", "q_ptr", "s_ptr", "amax_ptr", "gb_ptr", "vb_ptr", "valid_ptr")


# ---- the element and block pieces ----------------------------------------------------------


@triton.jit
def _row_offsets(rows, n, rows_per_run, runs_per_outer, outer_stride, run_stride, NESTED, PAIRS):
    """Where each output row's first gate (or pair) lies, in elements from the pointers: row
    r is the elements (r % rows_per_run) * n onwards of run r // rows_per_run (a plan with
    the split along the last dim holds whole rows in each run: one, or several where
    contiguous rows merge into one run)."""
    run = rows // rows_per_run
    first = (rows - run * rows_per_run) * n
    if NESTED:
        outer = run // runs_per_outer
        inner = run - outer * runs_per_outer
    else:  # launch._flatten: run r starts at r * outer_stride
        outer = run
        inner = 0
    if PAIRS:
        first = 2 * first
    return k._run_offsets(outer, inner, outer_stride, run_stride) + first


@triton.jit
def _activation(
    g_ptr,
    v_ptr,
    gb_ptr,
    vb_ptr,
    offsets,
    row_mask,
    start,
    n,
    alpha,
    limit,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """y of a [BLOCK_R, BLOCK_E] tile as the rule takes it, in float32: forward_kernel's
    activation (the bias added where HAS_BIAS), rounded to the input's dtype where ROUND
    (float64 is narrowed in any case). Masked lanes load zeros, whose y is 0 for every
    activation without a bias; every amax masks them anyway (_abs_bits)."""
    g, v = k._load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, n, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN
    )
    gc, vc = k._biased(
        g, v, gb_ptr, vb_ptr, row_mask, start, n,
        COMPUTE, HAS_BIAS, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN,
    )  # fmt: skip
    y = m.gated_forward(gc, vc, alpha, limit, ACT)
    if ROUND:
        y = y.to(g.dtype)
    return y.to(tl.float32)


@triton.jit
def _abs_bits(y, mask):
    """|y|'s bits as int32 (0 where masked): ordered as the floats, NaN above infinity."""
    return tl.where(mask, y.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0)


@triton.jit
def _as_float(bits):
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _div(a: tl.constexpr, b):
    """a / b by IEEE division (round to nearest), a a constant broadcast to b's shape."""
    return tl.math.div_rn(tl.zeros_like(b) + a, b)


@triton.jit
def _pow2(x, CEIL: tl.constexpr, EMAX: tl.constexpr):
    """x positive and normal, NaN or inf: the power of two at or above x (CEIL), or
    2^(floor(log2 x) - EMAX); NaN and inf kept. Exact, on the bits (Fp8Rule::pow2)."""
    bits = x.to(tl.int32, bitcast=True)
    e = (bits >> 23) - 127
    if CEIL:
        e = e + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    else:
        e = e - EMAX
    p = _as_float((e + 127) << 23)
    return tl.where((bits & 0x7F800000) == 0x7F800000, x, p)


@triton.jit
def _scale(amax, eps, FP8_MAX: tl.constexpr, EMAX: tl.constexpr, RULE: tl.constexpr):
    """The blocks' float32 dequantization scales from their amaxes (_fp8._scales)."""
    mx = tl.where((amax != amax) | (amax > eps), amax, eps)  # NaN kept
    if RULE == POW2_FLOOR:
        s = _pow2(mx, False, EMAX)
    else:
        s = tl.math.div_rn(mx, tl.zeros_like(mx) + FP8_MAX)
        if RULE == POW2_CEIL:
            s = _pow2(s, True, EMAX)
    return s


@triton.jit
def _fp8_bits(f, MANTISSA: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr):
    """The FP8 bits (in an int32) nearest float32 values already saturated to the type's
    range, ties to even, NaN to the type's NaN: bitwise torch's conversion. Integers only:
    normal results round on the float's bits (csrc's fp8_bits); below the least normal FP8
    the significand is shifted into the subnormal grid and rounded half to even."""
    SHIFT: tl.constexpr = 23 - MANTISSA
    all = f.to(tl.int32, bitcast=True)
    sign = (all >> 24) & 0x80
    b = all & 0x7FFFFFFF
    normal = (b + (((BIAS - 127) << 23) + (1 << (SHIFT - 1)) - 1) + ((b >> SHIFT) & 1)) >> SHIFT
    exponent = b >> 23
    significand = tl.where(exponent == 0, b & 0x7FFFFF, (b & 0x7FFFFF) | 0x800000)
    # The subnormal grid's step is 2^(1 - BIAS - MANTISSA): shift the 24-bit significand
    # right by the difference of exponents (at least 21 here; 31 clears it).
    shift = tl.minimum((151 - BIAS - MANTISSA) - tl.maximum(exponent, 1), 31)
    one = tl.zeros_like(b) + 1
    lsb = (significand >> shift) & 1
    subnormal = (significand + (one << (shift - 1)) - 1 + lsb) >> shift
    bits = tl.where(b < ((128 - BIAS) << 23), subnormal, normal)
    if FNUZ:  # one NaN, 0x80, and no negative zero
        bits = tl.where(bits == 0, 0, bits | sign)
        return tl.where(b > 0x7F800000, 0x80, bits)
    else:
        return tl.where(b > 0x7F800000, 0x7F, bits) | sign


@triton.jit
def _encode(
    y,
    r,
    FP8_MAX: tl.constexpr,
    MANTISSA: tl.constexpr,
    BIAS: tl.constexpr,
    FNUZ: tl.constexpr,
):
    """q = fp8(saturate(y * r)) as uint8."""
    v = m.clamp(y * r, 0.0 - FP8_MAX, FP8_MAX)  # NaN fails both comparisons and stays
    return _fp8_bits(v, MANTISSA, BIAS, FNUZ).to(tl.uint8)


# ---- the kernels --------------------------------------------------------------------------


@triton.jit(do_not_specialize=_INTEGERS, do_not_specialize_on_alignment=_POINTERS)
def amax_kernel(
    g_ptr,
    v_ptr,
    q_ptr,
    s_ptr,
    amax_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    rows: tl.int64,
    n: tl.int64,
    rows_per_run: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    rows_per_group: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    eps: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    ROUND: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The per-tensor amax's first pass: each program's amax of its tile, into amax_ptr's
    int32 by an atomic max of the bits. (quantize_kernel's arguments, so that one launcher
    feeds both; q_ptr and s_ptr are unused.)"""
    group, start, n = k._tile_origin(n, BLOCK_E, True)
    tile_rows = group * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = k._valid(tile_rows, tile_rows < rows, valid_ptr, rows_per_group, MASKED)
    offsets = _row_offsets(
        tile_rows, n, rows_per_run, runs_per_outer, outer_stride, run_stride, NESTED, PAIRS
    )
    a = k._param(alpha, COMPUTE)
    lim = k._param(limit, COMPUTE)
    y = _activation(
        g_ptr, v_ptr, gb_ptr, vb_ptr, offsets, row_mask, start, n, a, lim,
        ACT, COMPUTE, PAIRS, GATE_FIRST, HAS_BIAS, ROUND, BLOCK_R, BLOCK_E, ALIGN,
    )  # fmt: skip
    _, mask = k._dense_tile(q_ptr, tile_rows, row_mask, start, n, BLOCK_E, ALIGN)
    tl.atomic_max(amax_ptr, tl.max(tl.max(_abs_bits(y, mask), 1), 0))


@triton.jit(do_not_specialize=_INTEGERS, do_not_specialize_on_alignment=_POINTERS)
def quantize_kernel(
    g_ptr,
    v_ptr,
    q_ptr,
    s_ptr,
    amax_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    rows: tl.int64,
    n: tl.int64,
    rows_per_run: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    rows_per_group: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    eps: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    ROUND: tl.constexpr,
    GRANULARITY: tl.constexpr,
    BLOCK: tl.constexpr,
    LOOP: tl.constexpr,
    STATIC: tl.constexpr,
    RULE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    EMAX: tl.constexpr,
    MANTISSA: tl.constexpr,
    BIAS: tl.constexpr,
    FNUZ: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """q (uint8, dense [rows, n]) and the float32 scales (s_ptr: [rows, n / BLOCK] for
    BLOCKS, [rows] for TOKEN, one for TENSOR, where STATIC it is read from there) of a tile
    of BLOCK_R rows by BLOCK_E outputs; LOOP (TOKEN only): one program per BLOCK_R rows,
    looping over them twice."""
    a = k._param(alpha, COMPUTE)
    lim = k._param(limit, COMPUTE)
    eps32 = k._param(eps, tl.float32)
    if LOOP:
        group = tl.program_id(0).to(tl.int64)
        start = 0
    else:
        group, start, n = k._tile_origin(n, BLOCK_E, True)
    tile_rows = group * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = k._valid(tile_rows, tile_rows < rows, valid_ptr, rows_per_group, MASKED)
    offsets = _row_offsets(
        tile_rows, n, rows_per_run, runs_per_outer, outer_stride, run_stride, NESTED, PAIRS
    )
    if LOOP:
        # The rows' amax, a tile at a time; then the activations again, quantized.
        # while, not range(): triton 3.6's interpreter cannot take a tensor as range()'s bound.
        amax_bits = tl.zeros([BLOCK_R], tl.int32)
        first = 0
        while first < n:
            y = _activation(
                g_ptr, v_ptr, gb_ptr, vb_ptr, offsets, row_mask, first, n, a, lim,
                ACT, COMPUTE, PAIRS, GATE_FIRST, HAS_BIAS, ROUND, BLOCK_R, BLOCK_E, ALIGN,
            )  # fmt: skip
            _, mask = k._dense_tile(q_ptr, tile_rows, row_mask, first, n, BLOCK_E, ALIGN)
            amax_bits = tl.maximum(amax_bits, tl.max(_abs_bits(y, mask), 1))
            first += BLOCK_E
        s = _scale(_as_float(amax_bits), eps32, FP8_MAX, EMAX, RULE)
        tl.store(s_ptr + tile_rows, s, mask=row_mask)
        r = _div(1.0, s)[:, None]
        first = 0
        while first < n:
            y = _activation(
                g_ptr, v_ptr, gb_ptr, vb_ptr, offsets, row_mask, first, n, a, lim,
                ACT, COMPUTE, PAIRS, GATE_FIRST, HAS_BIAS, ROUND, BLOCK_R, BLOCK_E, ALIGN,
            )  # fmt: skip
            q_at, mask = k._dense_tile(q_ptr, tile_rows, row_mask, first, n, BLOCK_E, ALIGN)
            tl.store(q_at, _encode(y, r, FP8_MAX, MANTISSA, BIAS, FNUZ), mask=mask)
            first += BLOCK_E
    else:
        y = _activation(
            g_ptr, v_ptr, gb_ptr, vb_ptr, offsets, row_mask, start, n, a, lim,
            ACT, COMPUTE, PAIRS, GATE_FIRST, HAS_BIAS, ROUND, BLOCK_R, BLOCK_E, ALIGN,
        )  # fmt: skip
        q_at, mask = k._dense_tile(q_ptr, tile_rows, row_mask, start, n, BLOCK_E, ALIGN)
        if GRANULARITY == TENSOR:
            if STATIC:
                s = tl.load(s_ptr)
            else:
                s = _scale(_as_float(tl.load(amax_ptr)), eps32, FP8_MAX, EMAX, RULE)
                if tl.program_id(0) == 0:
                    tl.store(s_ptr, s)
            q = _encode(y, _div(1.0, s), FP8_MAX, MANTISSA, BIAS, FNUZ)
        elif GRANULARITY == TOKEN:  # the whole row is in the tile
            s = _scale(_as_float(tl.max(_abs_bits(y, mask), 1)), eps32, FP8_MAX, EMAX, RULE)
            tl.store(s_ptr + tile_rows, s, mask=row_mask)
            q = _encode(y, _div(1.0, s)[:, None], FP8_MAX, MANTISSA, BIAS, FNUZ)
        else:  # BLOCKS: the tile holds BLOCK_E / BLOCK whole blocks of each row
            PER_TILE: tl.constexpr = BLOCK_E // BLOCK
            bits = tl.reshape(_abs_bits(y, mask), (BLOCK_R, PER_TILE, BLOCK))
            s = _scale(_as_float(tl.max(bits, 2)), eps32, FP8_MAX, EMAX, RULE)
            per_row = n // BLOCK
            block = start // BLOCK + tl.arange(0, PER_TILE)
            s_at = s_ptr + tile_rows[:, None] * per_row + block[None, :]
            tl.store(s_at, s, mask=row_mask[:, None] & (block < per_row)[None, :])
            y3 = tl.reshape(y, (BLOCK_R, PER_TILE, BLOCK))
            q3 = _encode(y3, _div(1.0, s)[:, :, None], FP8_MAX, MANTISSA, BIAS, FNUZ)
            q = tl.reshape(q3, (BLOCK_R, BLOCK_E))
        tl.store(q_at, q, mask=mask)


# ---- the launcher -------------------------------------------------------------------------


def tile(granularity: str, block: int, rows: int, n: int, pairs: bool, itemsize: int, align: int):
    """(tile, LOOP): the launcher's tile for `rows` rows of n outputs (launch.choose), with
    BLOCKS' tiles at least a block wide; TOKEN's the whole row where it fits in a tile
    (BLOCK_R rows of the next power of two), else one row a program, looping."""
    outputs = launch.tile_outputs(itemsize)
    if granularity == "token":
        if n > outputs:
            return launch.Config(1, outputs), True
        least = launch.SCALAR_MIN_BLOCK_E if align == 1 else launch.MIN_BLOCK_E
        width = max(least, triton.next_power_of_2(n))
        return launch.Config(max(1, outputs // width), width), False
    c = launch.choose(rows, n, pairs, itemsize, align)
    if c.block_e < block:
        c = launch.Config(outputs // block, block)
    return launch.Config(c.block_r, c.block_e), False  # offsets are 64-bit here: no WIDE


def specialization(plan: dict, like: torch.Tensor, n: int, args: _fp8.Fp8Args, static: bool):
    """(tile, constexprs, the integer arguments) of a call: the plan's layout as rows of n
    (each inside one run), the activation's constexprs as launch.specialization gives them,
    and the rule's."""
    nested, strides = launch._flatten(plan)
    run_len, pairs = plan["run_len"], plan["pairs"]
    if run_len % n:  # a run holds whole rows wherever the split is along the last dim
        raise RuntimeError(f"glu_fused: a run of {run_len} does not hold whole rows of {n}")
    rows = plan["runs"] * (run_len // n)
    bias, masked = plan.get("bias") is not None, plan.get("valid_rows") is not None
    if (bias or masked) and run_len != n:  # RowOptions: every run one row of the result
        raise RuntimeError(f"glu_fused: a bias or token counts with runs of {run_len}, rows of {n}")
    addresses = [
        p.data_ptr() for p in (*plan["pointers"][:2], *launch._bias(plan)) if p is not None
    ]
    align = launch.alignment(addresses, (n, run_len, *strides), like.element_size())
    gate_bias, value_bias = launch._bias(plan)
    if pairs and bias and (gate_bias.data_ptr() < value_bias.data_ptr()) != plan["gate_first"]:
        raise RuntimeError("glu_fused: the bias's pairs are not in the inputs' order")
    if masked and plan["rows_per_group"] < 1:
        raise RuntimeError("glu_fused: token counts need rows_per_group >= 1")
    fp8_max, emax = _fp8.FP8_FORMATS[args.out_dtype]
    pow2 = args.scale_dtype != torch.float32
    rule = 0 if not pow2 else (2 if args.scale_rounding == "floor" else 1)
    config, loop = tile(
        args.granularity, args.group_size, rows, n, pairs, like.element_size(), align
    )
    constexprs = {
        "ACT": plan["activation"],
        "COMPUTE": tl.float64 if like.dtype == torch.float64 else tl.float32,
        "PAIRS": pairs,
        "GATE_FIRST": pairs and plan["gate_first"],
        "NESTED": nested,
        "HAS_BIAS": bias,
        "MASKED": masked,
        "ROUND": args.intermediate == "input" and like.dtype in (torch.float16, torch.bfloat16),
        "GRANULARITY": GRANULARITY_CODES[args.granularity],
        "BLOCK": args.group_size,
        "LOOP": loop,
        "STATIC": static,
        "RULE": rule,
        "FP8_MAX": fp8_max,
        "EMAX": emax,
        **FORMATS[args.out_dtype],
        "ALIGN": align,
    }
    integers = (rows, n, run_len // n, plan["runs_per_outer"], *strides)
    return config, constexprs, (*integers, plan.get("rows_per_group", 0))


def _grid(config: launch.Config, loop: bool, rows: int, n: int) -> tuple[int]:
    row_tiles = triton.cdiv(rows, config.block_r)
    return (row_tiles if loop else row_tiles * triton.cdiv(n, config.block_e),)


_AMAX_CONSTEXPRS = (
    "ACT",
    "COMPUTE",
    "PAIRS",
    "GATE_FIRST",
    "NESTED",
    "HAS_BIAS",
    "MASKED",
    "ROUND",
    "ALIGN",
)


def _poisoned(t: torch.Tensor, fill: float) -> torch.Tensor:
    """t filled with `fill` under $GLU_FUSED_POISON_OUTPUTS (as the plans fill every result
    with NaN), so that a test sees any element a kernel forgets to write."""
    if os.environ.get("GLU_FUSED_POISON_OUTPUTS", "0") not in ("", "0"):
        t.fill_(fill)
    return t


def quantize(plan, shape, like, args: _fp8.Fp8Args, static_scale):
    """(q, scale) of a planned call whose plain result has `shape`: the kernels launched on
    like's device and current stream, the scales then given their dtype and layout."""
    device = like.device
    if plan is None:  # no elements: the rule on an empty result gives the scales' shapes
        return _fp8.quantize(torch.empty(shape, device=device), args, static_scale)
    nan_byte = 0x80 if FORMATS[args.out_dtype]["FNUZ"] else 0x7F
    q = _poisoned(torch.empty(shape, dtype=torch.uint8, device=device), nan_byte)
    n = shape[-1]
    rows = q.numel() // n
    static = static_scale is not None
    config, constexprs, integers = specialization(plan, like, n, args, static)
    blocks = 1 if args.granularity == "token" else n // max(args.group_size, 1)
    if args.granularity == "tensor":
        s = (
            static_scale.reshape(1)
            if static
            else _poisoned(torch.empty(1, device=device), float("nan"))
        )
    else:
        s = _poisoned(torch.empty(rows, blocks, device=device), float("nan"))
    amax = torch.zeros(1, dtype=torch.int32, device=device)
    # The bias and counts: None (constexprs) where the plan has none, as the plain kernels'.
    pointers = (*plan["pointers"][:2], q, s, amax, *launch._bias(plan), plan.get("valid_rows"))
    floats = (float(plan["alpha"]), float(plan["limit"]), float(args.eps))
    options = launch.options(
        config, like.element_size(), constexprs["ALIGN"], torch.version.hip is None
    )
    tile_meta = {"BLOCK_R": config.block_r, "BLOCK_E": config.block_e}
    guard = torch.cuda.device(device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        if args.granularity == "tensor" and not static:
            amax_constexprs = {name: constexprs[name] for name in _AMAX_CONSTEXPRS}
            amax_kernel[_grid(config, False, rows, n)](
                *pointers, *integers, *floats, **amax_constexprs, **tile_meta, **options
            )
        quantize_kernel[_grid(config, constexprs["LOOP"], rows, n)](
            *pointers, *integers, *floats, **constexprs, **tile_meta, **options
        )
    q = q.view(args.out_dtype)
    if static:
        return q, s.clone()
    if args.granularity != "tensor":
        s = s.view(*shape[:-1], blocks)
    return q, _fp8._store_scales(s, args)


# ---- the ops' FP8 calls (glu_fused._ops.FP8["triton"]) ----------------------------------------


def packed_fp8(x, dim, function, layout, alpha, limit, *fp8_args, bias=None, valid_tokens=None):
    """glu_forward_fp8 on the Triton family: (q, scale) of the packed `function` of x."""
    _, _, args, scale = reference.check_packed_fp8(x, dim, function, layout, fp8_args)
    # The plan checks and lays out the call as the plain op's; its `out` (the plain result's
    # allocation) goes unused: a transient allocation the size of the plain result.
    out, plan = _C.plan_glu_forward(x, dim, function, layout, alpha, limit, bias, valid_tokens)
    return quantize(plan, tuple(out.shape), x, args, scale)


def gated_fp8(
    gate, value, activation, *fp8_args, gate_bias=None, value_bias=None, valid_tokens=None
):
    """gated_forward_fp8 on the Triton family: (q, scale) of act(gate) * value."""
    args, scale = reference.check_gated_fp8(gate, value, activation, fp8_args)
    out, plan = _C.plan_gated_forward(  # `out` unused, as above
        gate, value, activation, gate_bias, value_bias, valid_tokens
    )
    return quantize(plan, tuple(out.shape), gate, args, scale)
