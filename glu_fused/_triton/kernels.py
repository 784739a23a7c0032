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

The bias and token-count modes (csrc/glu_kernels.h, RowOptions), where every run is one row
of the result (run r is row r, its element e column e):
  * HAS_BIAS: gate_bias[e] and value_bias[e] (of the inputs' dtype, stepping as the pairs do:
    two elements for interleaved pairs, loaded as one span of the tile's columns and split
    like the inputs) are added in the compute type, unrounded, before the activation; the
    backward evaluates the same element math at the biased inputs;
  * MASKED: row r is valid iff r % rows_per_group < valid_rows[r // rows_per_group]
    (int32 counts); invalid rows are not read, their forward outputs not written, their
    gradients written as zeros.
Without them the pointers are None (constexprs) and rows_per_group an unused int, so the
plain kernels compile to the code they always had. backward_bias_kernel is the backward
that also sums the bias gradient: one program a (tile of BIAS_TILE_ROWS rows, BLOCK_E
columns), looping over its rows BLOCK_R at a time (see its docstring for the order of
summation).
"""

import triton
import triton.language as tl

from . import math as m

_INTEGERS = ("runs", "run_len", "runs_per_outer", "outer_stride", "run_stride")
_GRAD_STRIDES = ("grad_outer_stride", "grad_run_stride")
_ROW_POINTERS = ("gb_ptr", "vb_ptr", "valid_ptr")

# Rows whose gradients one partial of the bias gradient sums (csrc/glu_kernels.h,
# kBiasTileRows; the plans' "bias_tile_rows").
BIAS_TILE_ROWS = tl.constexpr(64)


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


@triton.jit
def _valid(rows, row_mask, valid_ptr, rows_per_group, MASKED: tl.constexpr):
    """row_mask, and where MASKED the rows' token counts: row r is read and written only if
    r % rows_per_group < valid_ptr[r // rows_per_group] (RowOptions::row_valid). Rows past
    the last are not asked."""
    if MASKED:
        group = rows // rows_per_group
        count = tl.load(valid_ptr + group, mask=row_mask, other=0)
        return row_mask & (rows - group * rows_per_group < count)
    else:
        return row_mask


@triton.jit
def _biased(
    g,
    v,
    gb_ptr,
    vb_ptr,
    row_mask,
    start,
    run_len,
    COMPUTE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The tile's gates and values in the compute type, the bias added (HAS_BIAS), unrounded.
    The bias of the tile's columns is loaded for each of its rows (row_mask's), the same
    addresses in every row: a tile of the inputs' shape and layout, so that its loads are
    ALIGN elements wide and it meets the inputs without a layout conversion (one row of it,
    [1, BLOCK_E], would be spread over the program's threads an element or two apiece, and
    moved to the tile's layout through shared memory); the rows after the first hit the
    cache."""
    gc = g.to(COMPUTE)
    vc = v.to(COMPUTE)
    if HAS_BIAS:
        gb, vb = _load_pairs(
            gb_ptr,
            vb_ptr,
            tl.zeros([BLOCK_R], tl.int64),
            row_mask,
            start,
            run_len,
            PAIRS,
            GATE_FIRST,
            BLOCK_R,
            BLOCK_E,
            ALIGN,
        )
        gc = gc + gb.to(COMPUTE)
        vc = vc + vb.to(COMPUTE)
    return gc, vc


@triton.jit(
    do_not_specialize=_INTEGERS + ("rows_per_group",),
    do_not_specialize_on_alignment=("g_ptr", "v_ptr", "out_ptr") + _ROW_POINTERS,
)
def forward_kernel(
    g_ptr,
    v_ptr,
    out_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    rows_per_group: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    group, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    rows = group * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = _valid(rows, rows < runs, valid_ptr, rows_per_group, MASKED)
    outer, inner = _run_places(group * BLOCK_R, runs_per_outer, BLOCK_R, NESTED)
    offsets = _run_offsets(outer, inner, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, row_mask, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN
    )
    gc, vc = _biased(
        g,
        v,
        gb_ptr,
        vb_ptr,
        row_mask,
        start,
        run_len,
        COMPUTE,
        HAS_BIAS,
        PAIRS,
        GATE_FIRST,
        BLOCK_R,
        BLOCK_E,
        ALIGN,
    )
    out = m.gated_forward(gc, vc, _param(alpha, COMPUTE), _param(limit, COMPUTE), ACT)
    out_at, out_mask = _dense_tile(out_ptr, rows, row_mask, start, run_len, BLOCK_E, ALIGN)
    tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _backward_rows(
    g_ptr,
    v_ptr,
    dy_ptr,
    dg_ptr,
    dv_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    first,
    start,
    runs,
    run_len,
    runs_per_outer,
    outer_stride,
    run_stride,
    grad_outer_stride,
    grad_run_stride,
    rows_per_group,
    alpha,
    limit,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ALIGN: tl.constexpr,
    STORE_Y: tl.constexpr,
):
    """The backward of the BLOCK_R runs from `first`, BLOCK_E outputs from `start` of each:
    the input gradients, and (STORE_Y, the in-place form) act(gate) * value over dy. Every
    store follows the loads it depends on, so the gradients may be stored over the inputs.
    Returns the gradients in the compute type (MASKED: 0 in the rows not valid, whose
    stored gradients are zeros) and the valid rows' mask."""
    rows = first + tl.arange(0, BLOCK_R)
    row_mask = rows < runs
    valid = _valid(rows, row_mask, valid_ptr, rows_per_group, MASKED)
    outer, inner = _run_places(first, runs_per_outer, BLOCK_R, NESTED)
    offsets = _run_offsets(outer, inner, outer_stride, run_stride)
    g, v = _load_pairs(
        g_ptr, v_ptr, offsets, valid, start, run_len, PAIRS, GATE_FIRST, BLOCK_R, BLOCK_E, ALIGN
    )
    dy_at, dy_mask = _dense_tile(dy_ptr, rows, valid, start, run_len, BLOCK_E, ALIGN)
    dy = tl.load(dy_at, mask=dy_mask, other=0.0)
    gc, vc = _biased(
        g,
        v,
        gb_ptr,
        vb_ptr,
        valid,
        start,
        run_len,
        COMPUTE,
        HAS_BIAS,
        PAIRS,
        GATE_FIRST,
        BLOCK_R,
        BLOCK_E,
        ALIGN,
    )
    a = _param(alpha, COMPUTE)
    lim = _param(limit, COMPUTE)
    out_type = dg_ptr.dtype.element_ty
    if STORE_Y:
        y, dg, dv = m.gated_forward_backward(gc, vc, dy.to(COMPUTE), a, lim, ACT)
        tl.store(dy_at, y.to(out_type), mask=dy_mask)
    else:
        dg, dv = m.gated_backward(gc, vc, dy.to(COMPUTE), a, lim, ACT)
    if MASKED:  # the rows not read: zero gradients
        dg = tl.where(valid[:, None], dg, 0.0)
        dv = tl.where(valid[:, None], dv, 0.0)
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
    return dg, dv, valid


@triton.jit(
    do_not_specialize=_INTEGERS + _GRAD_STRIDES + ("rows_per_group",),
    do_not_specialize_on_alignment=("g_ptr", "v_ptr", "dy_ptr", "dg_ptr", "dv_ptr") + _ROW_POINTERS,
)
def backward_kernel(
    g_ptr,
    v_ptr,
    dy_ptr,
    dg_ptr,
    dv_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    grad_outer_stride: tl.int64,
    grad_run_stride: tl.int64,
    rows_per_group: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    group, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    _backward_rows(
        g_ptr,
        v_ptr,
        dy_ptr,
        dg_ptr,
        dv_ptr,
        gb_ptr,
        vb_ptr,
        valid_ptr,
        group * BLOCK_R,
        start,
        runs,
        run_len,
        runs_per_outer,
        outer_stride,
        run_stride,
        grad_outer_stride,
        grad_run_stride,
        rows_per_group,
        alpha,
        limit,
        ACT,
        COMPUTE,
        PAIRS,
        GATE_FIRST,
        NESTED,
        HAS_BIAS,
        MASKED,
        BLOCK_R,
        BLOCK_E,
        ALIGN,
        False,
    )


@triton.jit(
    do_not_specialize=_INTEGERS + _GRAD_STRIDES + ("rows_per_group",),
    do_not_specialize_on_alignment=("g_ptr", "v_ptr", "dy_ptr", "dg_ptr", "dv_ptr", "sums_ptr")
    + _ROW_POINTERS,
)
def backward_bias_kernel(
    g_ptr,
    v_ptr,
    dy_ptr,
    dg_ptr,
    dv_ptr,
    gb_ptr,
    vb_ptr,
    valid_ptr,
    sums_ptr,
    runs: tl.int64,
    run_len: tl.int64,
    runs_per_outer: tl.int64,
    outer_stride: tl.int64,
    run_stride: tl.int64,
    grad_outer_stride: tl.int64,
    grad_run_stride: tl.int64,
    rows_per_group: tl.int64,
    alpha: tl.float64,
    limit: tl.float64,
    ACT: tl.constexpr,
    COMPUTE: tl.constexpr,
    PAIRS: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    NESTED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WIDE: tl.constexpr,
    ALIGN: tl.constexpr,
    STORE_Y: tl.constexpr,
):
    """backward_kernel with a bias, which also writes the bias gradient's partial sums
    (BackwardCall::bias_grad_partials): sums_ptr, of the compute type (float32; float64
    for float64), dense [tiles, 2, run_len], where sums[t][0][e] sums the gate gradients
    (in the compute type, before their rounding) of the valid rows r of tile t
    (BIAS_TILE_ROWS * t <= r < BIAS_TILE_ROWS * (t + 1)) at column e, and sums[t][1][e]
    the value gradients.

    One program owns a tile of rows and BLOCK_E columns (BLOCK_R divides BIAS_TILE_ROWS):
    it walks the tile's rows BLOCK_R at a time in order, each step adding its gradients
    (0 for the rows not valid or past the last) to a [BLOCK_R, BLOCK_E] accumulator in the
    compute type (row j of it sums rows j, j + BLOCK_R, ... of the tile, in that order),
    then reduces the accumulator over its BLOCK_R rows with tl.sum, whose tree is fixed by
    the tile's shape. No atomics: the order of every sum is fixed by the launch's tile, and
    every partial is written (0 where no row of the tile is valid).

    STORE_Y, without a bias (the launcher's "backward_in_place_bias": GatedMLP's backward,
    whose projections already hold their biases): the in-place form, as
    backward_in_place_kernel, the gradients over the inputs and act(gate) * value over dy,
    with the same sums."""
    tile, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    gate_sum = tl.zeros([BLOCK_R, BLOCK_E], COMPUTE)
    value_sum = tl.zeros([BLOCK_R, BLOCK_E], COMPUTE)
    for step in range(0, BIAS_TILE_ROWS // BLOCK_R):
        dg, dv, valid = _backward_rows(
            g_ptr,
            v_ptr,
            dy_ptr,
            dg_ptr,
            dv_ptr,
            gb_ptr,
            vb_ptr,
            valid_ptr,
            tile * BIAS_TILE_ROWS + step * BLOCK_R,
            start,
            runs,
            run_len,
            runs_per_outer,
            outer_stride,
            run_stride,
            grad_outer_stride,
            grad_run_stride,
            rows_per_group,
            alpha,
            limit,
            ACT,
            COMPUTE,
            PAIRS,
            GATE_FIRST,
            NESTED,
            HAS_BIAS,
            MASKED,
            BLOCK_R,
            BLOCK_E,
            ALIGN,
            STORE_Y,
        )
        gate_sum += tl.where(valid[:, None], dg, 0.0)
        value_sum += tl.where(valid[:, None], dv, 0.0)
    # sums[tile][0] and sums[tile][1], the tile's columns of each: stored from the first row
    # of a tile of the accumulators' shape and layout (the sums broadcast to it, every row
    # the same addresses), so that the stores are ALIGN elements wide (a [1, BLOCK_E] store
    # takes a layout of an element or two a thread).
    sums = sums_ptr + tile * 2 * run_len + tl.zeros([BLOCK_R], tl.int64)
    first_row = tl.arange(0, BLOCK_R) == 0
    gate_at, mask = _span(sums, first_row, start, run_len, BLOCK_E, ALIGN)
    value_at, _ = _span(sums + run_len, first_row, start, run_len, BLOCK_E, ALIGN)
    zero = tl.zeros([BLOCK_R, BLOCK_E], COMPUTE)
    tl.store(gate_at, zero + tl.sum(gate_sum, 0)[None, :], mask=mask)
    tl.store(value_at, zero + tl.sum(value_sum, 0)[None, :], mask=mask)


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
    the gates and values, act(gate) * value over dy. No bias, no token counts (the pointers
    it passes for them are never read)."""
    group, start, run_len = _tile_origin(run_len, BLOCK_E, WIDE)
    _backward_rows(
        g_ptr,
        v_ptr,
        dy_ptr,
        g_ptr,
        v_ptr,
        g_ptr,
        v_ptr,
        g_ptr,
        group * BLOCK_R,
        start,
        runs,
        run_len,
        runs_per_outer,
        outer_stride,
        run_stride,
        outer_stride,
        run_stride,
        0,
        alpha,
        limit,
        ACT,
        COMPUTE,
        PAIRS,
        GATE_FIRST,
        NESTED,
        False,
        False,
        BLOCK_R,
        BLOCK_E,
        ALIGN,
        True,
    )
