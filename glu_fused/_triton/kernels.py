"""The Triton kernels, forward and backward.

One program computes a tile of BLOCK_R runs by BLOCK_E outputs of a PairLayout
(csrc/glu_layout.h; launch.py chooses the tile): it loads the tile's gates and values (for
interleaved pairs, one contiguous tile of 2 * BLOCK_E elements per run, split in
registers), computes in float32 (float64 for float64) and rounds once to the tensor's
dtype. Masked lanes at the end of a run or past the last run compute the same per-element
code as full tiles, so every element's result is bitwise the same wherever it lies.

Offsets of rows are 64-bit; offsets inside a run are 32-bit unless a run is so long that
they could overflow (WIDE).
"""

import triton
import triton.language as tl

from . import math as m


@triton.jit
def _param(p, COMPUTE: tl.constexpr):
    """A float64 scalar argument in the compute type, rounded once. (The interpreter passes
    it as a Python float, which tl.cast would first round to float32.)"""
    return (p * tl.full([], 1, COMPUTE)).to(COMPUTE)


@triton.jit
def _tile_origin(run_len, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, WIDE: tl.constexpr):
    """This program's runs (int64), the first output of its part of them, and run_len
    (int64 if WIDE, so that 2 * run_len cannot overflow either)."""
    if WIDE:
        run_len = run_len.to(tl.int64)
    pid = tl.program_id(0)
    parts = tl.cdiv(run_len, BLOCK_E)
    group = pid // parts
    part = pid - group * parts
    rows = group.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    return rows, part * BLOCK_E, run_len


@triton.jit
def _run_offsets(rows, runs_per_outer, outer_stride, run_stride):
    return (rows // runs_per_outer) * outer_stride + (rows % runs_per_outer) * run_stride


@triton.jit
def _span(offsets, row_mask, first, end, WIDTH: tl.constexpr):
    """A tile's element offsets, [runs, WIDTH] from `first` of each run at `offsets`, and its
    mask: the runs that exist, the elements before `end`."""
    cols = first + tl.arange(0, WIDTH)
    return offsets[:, None] + cols[None, :], row_mask[:, None] & (cols < end)[None, :]


@triton.jit
def _load_pairs(
    g_ptr,
    v_ptr,
    offsets,
    row_mask,
    start,
    run_len,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """The tile's gates and values, [BLOCK_R, BLOCK_E] each, as stored."""
    if PAIRS:
        if GATE_FIRST:
            first_ptr = g_ptr
        else:
            first_ptr = v_ptr
        at, mask = _span(offsets, row_mask, 2 * start, 2 * run_len, 2 * BLOCK_E)
        both = tl.load(first_ptr + at, mask=mask, other=0.0)
        first, second = tl.split(tl.reshape(both, (BLOCK_R, BLOCK_E, 2)))
        if GATE_FIRST:
            g = first
            v = second
        else:
            g = second
            v = first
    else:
        at, mask = _span(offsets, row_mask, start, run_len, BLOCK_E)
        g = tl.load(g_ptr + at, mask=mask, other=0.0)
        v = tl.load(v_ptr + at, mask=mask, other=0.0)
    return g, v


@triton.jit
def _store_pairs(
    g_ptr,
    v_ptr,
    offsets,
    row_mask,
    start,
    run_len,
    g,
    v,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Stores a tile of gate and value gradients where _load_pairs reads gates and values."""
    if PAIRS:
        if GATE_FIRST:
            first_ptr = g_ptr
            both = tl.join(g, v)
        else:
            first_ptr = v_ptr
            both = tl.join(v, g)
        at, mask = _span(offsets, row_mask, 2 * start, 2 * run_len, 2 * BLOCK_E)
        tl.store(first_ptr + at, tl.reshape(both, (BLOCK_R, 2 * BLOCK_E)), mask=mask)
    else:
        at, mask = _span(offsets, row_mask, start, run_len, BLOCK_E)
        tl.store(g_ptr + at, g, mask=mask)
        tl.store(v_ptr + at, v, mask=mask)


@triton.jit
def _dense_tile(rows, row_mask, start, run_len, BLOCK_E: tl.constexpr):
    """Offsets and mask of the tile in a dense [runs, run_len] tensor."""
    return _span(rows * run_len, row_mask, start, run_len, BLOCK_E)


@triton.jit
def forward_kernel(
    g_ptr,
    v_ptr,
    out_ptr,
    runs,
    run_len,
    runs_per_outer,
    outer_stride,
    run_stride,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
):
    rows, start, run_len = _tile_origin(run_len, BLOCK_R, BLOCK_E, WIDE)
    row_mask = rows < runs
    offsets = _run_offsets(rows, runs_per_outer, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E
    )
    out = m.gated_forward(
        g.to(COMPUTE), v.to(COMPUTE), _param(alpha, COMPUTE), _param(limit, COMPUTE), ACT
    )
    out_offsets, out_mask = _dense_tile(rows, row_mask, start, run_len, BLOCK_E)
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def backward_kernel(
    g_ptr,
    v_ptr,
    dy_ptr,
    dg_ptr,
    dv_ptr,
    runs,
    run_len,
    runs_per_outer,
    outer_stride,
    run_stride,
    grad_outer_stride,
    grad_run_stride,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
):
    rows, start, run_len = _tile_origin(run_len, BLOCK_R, BLOCK_E, WIDE)
    row_mask = rows < runs
    offsets = _run_offsets(rows, runs_per_outer, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E
    )
    dy_offsets, dy_mask = _dense_tile(rows, row_mask, start, run_len, BLOCK_E)
    dy = tl.load(dy_ptr + dy_offsets, mask=dy_mask, other=0.0)
    dg, dv = m.gated_backward(
        g.to(COMPUTE),
        v.to(COMPUTE),
        dy.to(COMPUTE),
        _param(alpha, COMPUTE),
        _param(limit, COMPUTE),
        ACT,
    )
    grad_offsets = _run_offsets(rows, runs_per_outer, grad_outer_stride, grad_run_stride)
    out_type = dg_ptr.dtype.element_ty
    _store_pairs(
        dg_ptr,
        dv_ptr,
        grad_offsets,
        row_mask,
        start,
        run_len,
        dg.to(out_type),
        dv.to(out_type),
        PAIRS,
        GATE_FIRST,
        BLOCK_R,
        BLOCK_E,
    )
