"""Where the gate and the value of each output element live, for the Triton kernels.

The same description as csrc/glu_layout.h, built by the same rules as csrc/glu_ops.cpp
(kept in step with it): the output is dense, [runs, run_len], and

    gate(r, e)  = gate  + run_offset(r) + e * elem_stride
    value(r, e) = value + run_offset(r) + e * elem_stride
    run_offset(r) = (r // runs_per_outer) * outer_stride + (r % runs_per_outer) * run_stride

Split along a contiguous last dim (any row stride): one run per row. Split along another
dim whose inner block is contiguous: one run per (outer, position along dim). Anything
else is made contiguous first: the only case that copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairLayout:
    runs: int
    run_len: int
    runs_per_outer: int = 1
    outer_stride: int = 0
    run_stride: int = 0
    elem_stride: int = 1  # 2 where gate and value alternate element by element

    def dense(self) -> PairLayout:
        """The same runs, one after another: the layout of a contiguous result."""
        return PairLayout(self.runs, self.run_len, 1, self.run_len, 0, 1)


@dataclass(frozen=True)
class Split:
    """A packed input's layout: `x` (the input, or its contiguous copy), where its gate and
    value start (element offsets into x's storage from x's data pointer), and the runs."""

    x: torch.Tensor
    gate_offset: int
    value_offset: int
    layout: PairLayout


def _collapse(t: torch.Tensor, begin: int, end: int) -> tuple[int, int] | None:
    """Dims [begin, end) as one (size, stride) if they are evenly strided; size-1 dims are
    free."""
    size, stride = 1, 0
    for d in range(end - 1, begin - 1, -1):
        if t.shape[d] == 1:
            continue
        if size == 1:
            stride = t.stride(d)
        elif t.stride(d) != stride * size:
            return None
        size *= t.shape[d]
    return size, stride


def split(x: torch.Tensor, dim: int, interleaved: bool, gate_is_second: bool) -> Split:
    """The layout of the halves (or interleaved pairs) of `x` along `dim` (>= 0)."""
    half = x.shape[dim] // 2
    outer = _collapse(x, 0, dim)
    inner = _collapse(x, dim + 1, x.dim())
    direct = (
        outer is not None
        and inner is not None
        and ((half == 0 or x.stride(dim) == 1) if inner[0] == 1 else inner[1] == 1)
    )
    if not direct:
        x = x.contiguous()
        outer, inner = _collapse(x, 0, dim), _collapse(x, dim + 1, x.dim())
    (n_outer, outer_stride), (n_inner, _) = outer, inner
    split_stride = x.stride(dim)
    if n_inner == 1:
        layout = PairLayout(n_outer, half, 1, outer_stride, 0, 2 if interleaved else 1)
        second = 1 if interleaved else half
    else:
        run_stride = 2 * split_stride if interleaved else split_stride
        layout = PairLayout(n_outer * half, n_inner, max(half, 1), outer_stride, run_stride, 1)
        second = split_stride if interleaved else half * split_stride
    gate, value = (second, 0) if gate_is_second else (0, second)
    return Split(x, gate, value, layout)


def _rows(t: torch.Tensor) -> PairLayout | None:
    """Rows of a tensor whose last dim is contiguous."""
    if t.is_contiguous():
        return PairLayout(1, t.numel(), 1, 0, 0, 1)
    rows = _collapse(t, 0, t.dim() - 1)
    if t.stride(-1) != 1 or rows is None:
        return None
    return PairLayout(rows[0], t.shape[-1], 1, rows[1], 0, 1)


def gated(gate: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PairLayout]:
    """gate and value as two tensors sharing one layout (contiguous copies where they do
    not)."""
    if gate.stride() == value.stride():
        layout = _rows(gate)
        if layout is not None:
            return gate, value, layout
    gate, value = gate.contiguous(), value.contiguous()
    return gate, value, _rows(gate)
