"""The Triton kernels: forward, backward, and the lean MLP's in-place backward.

One program computes a tile of BLOCK_R runs by BLOCK_E outputs of a PairLayout
(csrc/glu_layout.h; launch.py chooses the tile): it loads the tile's gates and values (for
interleaved pairs, one contiguous tile of 2 * BLOCK_E elements per run, split in
registers), computes in float32 (float64 for float64) and rounds once to the tensor's
dtype. Masked lanes at the end of a run or past the last run compute the same per-element
code as full tiles, so every element's result is bitwise the same wherever it lies.

Offsets of rows are 64-bit; offsets inside a run are 32-bit unless a run is so long that
they could overflow (WIDE).

Specialization is the launcher's alone: integer arguments are int64 and pointers are not
specialized on their alignment (Triton would otherwise compile a variant per argument that
equals 1 or is a multiple of 16). What Triton's divisibility specialization would have
told the compiler, ALIGN tells it for every layout: every pointer is ALIGN elements
aligned, and run_len and every stride are multiples of ALIGN (launch.alignment computes the
largest such power of two, up to 16 bytes, from the call's pointers and strides). The
kernels state it with tl.multiple_of on the tile's pointers and on the count of elements
left in the run, so accesses are ALIGN elements wide (128-bit where ALIGN reaches 16
bytes), and 8- or 4-byte wide where a row length or a stride is not a multiple of 16.
NESTED: runs come in groups of runs_per_outer (a split along an inner dim); otherwise run r
starts at r * outer_stride.
"""

import triton
import triton.language as tl

from . import math as m

_INTEGERS = ("runs", "run_len", "runs_per_outer", "outer_stride", "run_stride")
_GRAD_STRIDES = ("grad_outer_stride", "grad_run_stride")


@triton.jit
def _param(p, COMPUTE: tl.constexpr):
    """A float64 scalar argument in the compute type, rounded once. (The interpreter passes
    it as a Python float, which tl.cast would first round to float32.)"""
    return (p * tl.full([], 1, COMPUTE)).to(COMPUTE)


@triton.jit
def _tile_origin(run_len, BLOCK_E: tl.constexpr, WIDE: tl.constexpr):
    """This program's tile: its group of runs, the first output of its part of them, and
    run_len (int32 unless WIDE, where offsets inside a run stay 64-bit)."""
    if not WIDE:
        run_len = run_len.to(tl.int32)
    pid = tl.program_id(0)
    parts = tl.cdiv(run_len, BLOCK_E)
    group = pid // parts
    part = pid - group * parts
    return group.to(tl.int64), part * BLOCK_E, run_len


@triton.jit
def _run_places(first, runs_per_outer, BLOCK_R: tl.constexpr, NESTED: tl.constexpr):
    """The tile's runs, first to first + BLOCK_R - 1, as (outer block, place in it):
    PairLayout::run_offset's r / runs_per_outer and r % runs_per_outer. The launcher keeps
    BLOCK_R <= runs_per_outer where NESTED, so the runs of a tile cross into the next outer
    block at most once: one division per program, not one per run."""
    if NESTED:
        block = first // runs_per_outer
        place = (first - block * runs_per_outer) + tl.arange(0, BLOCK_R)
        crossed = place >= runs_per_outer
        return block + crossed.to(tl.int64), tl.where(crossed, place - runs_per_outer, place)
    else:
        return first + tl.arange(0, BLOCK_R), 0


@triton.jit
def _run_offsets(outer, inner, outer_stride, run_stride):
    """Where each run starts, in elements: PairLayout::run_offset."""
    return outer * outer_stride + inner * run_stride


@triton.jit
def _span(run_ptrs, row_mask, first, end, WIDTH: tl.constexpr, ALIGN: tl.constexpr):
    """A tile's pointers, [runs, WIDTH] from `first` of each run (run_ptrs: their first
    elements), and its mask: the runs that exist, the elements before `end`.

    Each run starts ALIGN elements aligned (launch.alignment) and `first` is a multiple of
    BLOCK_E, so each row of the tile starts ALIGN elements aligned (tl.multiple_of counts
    bytes for pointers; the hint sits on the tile's own pointers, which no canonicalization
    folds away). What is left of each run from `first` (at most WIDTH counts, in int32 even
    where WIDE) is a multiple of ALIGN (run_len is one), so the mask is constant over
    ALIGN-element groups and cannot split a vector."""
    left = tl.multiple_of(tl.minimum(end - first, WIDTH).to(tl.int32), ALIGN)
    cols = tl.arange(0, WIDTH)
    at = (run_ptrs + first)[:, None] + cols[None, :]
    at = tl.multiple_of(at, [1, ALIGN * (at.dtype.element_ty.primitive_bitwidth // 8)])
    return at, row_mask[:, None] & (cols < left)[None, :]


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
    ALIGN: tl.constexpr,
):
    """The tile's gates and values, [BLOCK_R, BLOCK_E] each, as stored."""
    if PAIRS:
        if GATE_FIRST:
            first_ptr = g_ptr
        else:
            first_ptr = v_ptr
        at, mask = _span(
            first_ptr + offsets,
            row_mask,
            2 * start,
            2 * run_len,
            2 * BLOCK_E,
            ALIGN,
        )
        both = tl.load(at, mask=mask, other=0.0)
        first, second = tl.split(tl.reshape(both, (BLOCK_R, BLOCK_E, 2)))
        if GATE_FIRST:
            g = first
            v = second
        else:
            g = second
            v = first
    else:
        g_at, mask = _span(g_ptr + offsets, row_mask, start, run_len, BLOCK_E, ALIGN)
        v_at, _ = _span(v_ptr + offsets, row_mask, start, run_len, BLOCK_E, ALIGN)
        g = tl.load(g_at, mask=mask, other=0.0)
        v = tl.load(v_at, mask=mask, other=0.0)
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
    ALIGN: tl.constexpr,
):
    """Stores a tile of gate and value gradients where _load_pairs reads gates and values."""
    if PAIRS:
        if GATE_FIRST:
            first_ptr = g_ptr
            both = tl.join(g, v)
        else:
            first_ptr = v_ptr
            both = tl.join(v, g)
        at, mask = _span(
            first_ptr + offsets,
            row_mask,
            2 * start,
            2 * run_len,
            2 * BLOCK_E,
            ALIGN,
        )
        tl.store(at, tl.reshape(both, (BLOCK_R, 2 * BLOCK_E)), mask=mask)
    else:
        g_at, mask = _span(g_ptr + offsets, row_mask, start, run_len, BLOCK_E, ALIGN)
        v_at, _ = _span(v_ptr + offsets, row_mask, start, run_len, BLOCK_E, ALIGN)
        tl.store(g_at, g, mask=mask)
        tl.store(v_at, v, mask=mask)


@triton.jit
def _dense_tile(ptr, rows, row_mask, start, run_len, BLOCK_E: tl.constexpr, ALIGN: tl.constexpr):
    """Pointers and mask of the tile in a dense [runs, run_len] tensor."""
    return _span(ptr + rows * run_len, row_mask, start, run_len, BLOCK_E, ALIGN)


@triton.jit(
    do_not_specialize=_INTEGERS, do_not_specialize_on_alignment=("g_ptr", "v_ptr", "out_ptr")
)
def forward_kernel(
    g_ptr,
    v_ptr,
    out_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    group, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    rows = group * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < runs
    outer, inner = _run_places(group * BLOCK_R, runs_per_outer, BLOCK_R, NESTED)
    offsets = _run_offsets(outer, inner, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN
    )
    out = m.gated_forward(
        g.to(COMPUTE), v.to(COMPUTE), _param(alpha, COMPUTE), _param(limit, COMPUTE), ACT
    )
    out_at, out_mask = _dense_tile(out_ptr, rows, row_mask, start, run_len, BLOCK_E, ALIGN)
    tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _backward_tile(
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
    alpha,
    limit,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
    STORE_Y: tl.constexpr,
):
    """One tile of the backward: the input gradients, and (STORE_Y, the in-place form)
    act(gate) * value over dy. Every store follows the loads it depends on, so the gradients
    may be stored over the inputs."""
    group, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    rows = group * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < runs
    outer, inner = _run_places(group * BLOCK_R, runs_per_outer, BLOCK_R, NESTED)
    offsets = _run_offsets(outer, inner, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN
    )
    dy_at, dy_mask = _dense_tile(dy_ptr, rows, row_mask, start, run_len, BLOCK_E, ALIGN)
    dy = tl.load(dy_at, mask=dy_mask, other=0.0)
    gc = g.to(COMPUTE)
    vc = v.to(COMPUTE)
    a = _param(alpha, COMPUTE)
    lim = _param(limit, COMPUTE)
    out_type = dg_ptr.dtype.element_ty
    if STORE_Y:
        y, dg, dv = m.gated_forward_backward(gc, vc, dy.to(COMPUTE), a, lim, ACT)
        tl.store(dy_at, y.to(out_type), mask=dy_mask)
    else:
        dg, dv = m.gated_backward(gc, vc, dy.to(COMPUTE), a, lim, ACT)
    if STORE_Y:  # the gradients go where the inputs came from: their addresses, reused
        grad_offsets = offsets
    else:
        grad_offsets = _run_offsets(outer, inner, grad_outer_stride, grad_run_stride)
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
        ALIGN,
    )


@triton.jit(
    do_not_specialize=_INTEGERS + _GRAD_STRIDES,
    do_not_specialize_on_alignment=("g_ptr", "v_ptr", "dy_ptr", "dg_ptr", "dv_ptr"),
)
def backward_kernel(
    g_ptr,
    v_ptr,
    dy_ptr,
    dg_ptr,
    dv_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    grad_outer_stride: tl.int64,
    grad_run_stride: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    _backward_tile(
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
        alpha,
        limit,
        ACT,
        COMPUTE,
        PAIRS,
        GATE_FIRST,
        NESTED,
        BLOCK_R,
        BLOCK_E,
        WIDE,
        ALIGN,
        False,
    )


@triton.jit(
    do_not_specialize=_INTEGERS,
    do_not_specialize_on_alignment=("g_ptr", "v_ptr", "dy_ptr"),
)
def backward_in_place_kernel(
    g_ptr,
    v_ptr,
    dy_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The lean MLP's backward (gated_backward_in_place): the gate and value gradients over
    the gates and values, act(gate) * value over dy."""
    _backward_tile(
        g_ptr,
        v_ptr,
        dy_ptr,
        g_ptr,
        v_ptr,
        runs,
        run_len,
        runs_per_outer,
        outer_stride,
        run_stride,
        outer_stride,
        run_stride,
        alpha,
        limit,
        ACT,
        COMPUTE,
        PAIRS,
        GATE_FIRST,
        NESTED,
        BLOCK_R,
        BLOCK_E,
        WIDE,
        ALIGN,
        True,
    )
