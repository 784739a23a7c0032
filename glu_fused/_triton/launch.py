"""One Triton kernel launch per op call, from the call's plan (glu_fused._C.plan_*): the
pointers, the runs of its PairLayout (csrc/glu_layout.h), the activation and its
parameters.

Every kernel the launcher can choose is in a small fixed set, so that all of them can be
compiled ahead of time (tests/test_triton_codegen.py compiles each for sm_80 and sm_90)
rather than found by the first call that needs one. Tiles, a heuristic rather than
autotuning (an autotuned choice would have to be measured on every shape, and the
interpreter cannot time anything), are one of configs(itemsize, align):
  * every tile holds TILE = 4096 outputs in 8 warps, 16 per thread: each thread issues two
    or more 16-byte loads per tensor, and a 64 MiB input still makes thousands of programs
    for an H200's 132 SMs. float64 tiles hold half as many, 8 per thread (still four
    16-byte loads per tensor): with 16, float64 GeLU's registers spill;
  * BLOCK_E, a tile's outputs of each run, is a power of two from 16 (256 with one
    element per access) to the tile, and BLOCK_R = tile / BLOCK_E runs are stacked in a
    tile: choose() takes the widest BLOCK_E whose tiles cover at most 1/8 more than the
    fewest tiles any BLOCK_E needs;
  * runs long enough that offsets inside them could overflow int32 take the one WIDE tile.
Besides the tile, a kernel is specialized on ALIGN (alignment(): the vector width the call's
pointers and strides allow), NESTED (runs grouped under outer blocks), the activation, the
input dtype (float64 computes in float64, the others in float32), PAIRS and GATE_FIRST
(where gate and value alternate: which comes first), and the bias and token-count modes of
csrc/glu_kernels.h's RowOptions: HAS_BIAS (a bias added to gate and value) and MASKED (token
counts: rows past their group's count neither read nor written). A backward that also
sums the bias gradient (a plan with "bias_grad_partials") is backward_bias_kernel, on a
tile of at most BIAS_TILE_ROWS runs (most_runs), one program for each tile of
BIAS_TILE_ROWS rows and BLOCK_E columns; the in-place backward that sums it (a plan with
"in_place": GatedMLP's projections' biases) is the same kernel with STORE_Y, launched as
"backward_in_place_bias". specialization() gives them all, and options() the
compile options that go with them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import kernels

TILE = 4096
WARPS = 8
# Outputs of a run per tile, at the least: a few vectors of every dtype. With one element
# per access (ALIGN 1), the elements a thread holds along a run are 32 apart, so a narrow
# tile spreads each thread over BLOCK_R * 32 / 256 runs, each with its addresses: at 4 runs
# per thread, a nested backward of pairs took 255 registers and spilled; 2 at most there.
MIN_BLOCK_E = 16
SCALAR_MIN_BLOCK_E = 256
VECTOR_BYTES = 16
# Offsets inside a run are 32-bit unless (2 for pairs) * (run_len + tile) reaches this.
WIDE_FROM = 2**31
MAXNREG = 255

KERNELS = {
    "forward": kernels.forward_kernel,
    "backward": kernels.backward_kernel,
    "backward_in_place": kernels.backward_in_place_kernel,
    "backward_bias": kernels.backward_bias_kernel,
    "backward_in_place_bias": kernels.backward_bias_kernel,
}
# The launches that sum the bias gradient's partials (backward_bias_kernel's): tiles of at
# most BIAS_TILE_ROWS runs, a program for each BIAS_TILE_ROWS rows.
SUMMING = ("backward_bias", "backward_in_place_bias")
# The kernels that take the bias and token counts, and the (HAS_BIAS, MASKED) each can launch
# with: backward_bias always has a bias; the in-place backward neither (its projections
# hold theirs).
ROW_MODES = {
    "forward": ((False, False), (True, False), (False, True), (True, True)),
    "backward": ((False, False), (True, False), (False, True), (True, True)),
    "backward_bias": ((True, False), (True, True)),
    "backward_in_place": ((False, False),),
    "backward_in_place_bias": ((False, False),),
}
BIAS_TILE_ROWS = kernels.BIAS_TILE_ROWS.value
# (PAIRS, GATE_FIRST) of a launch: halves have a pointer each, so GATE_FIRST is always False
# for them; interleaved pairs start with the gate or with the value.
PAIR_LAYOUTS = ((False, False), (True, True), (True, False))


@dataclass(frozen=True)
class Config:
    """A tile and its warps."""

    block_r: int
    block_e: int
    wide: bool = False
    num_warps: int = WARPS

    def meta(self) -> dict:
        """The kernel's tile constexprs."""
        return {"BLOCK_R": self.block_r, "BLOCK_E": self.block_e, "WIDE": self.wide}


def tile_outputs(itemsize: int) -> int:
    """Outputs per tile for elements of `itemsize` bytes."""
    return TILE // 2 if itemsize > 4 else TILE


def _narrow(itemsize: int, align: int | None) -> tuple[Config, ...]:
    tile = tile_outputs(itemsize)
    least = SCALAR_MIN_BLOCK_E if align == 1 else MIN_BLOCK_E
    widths = (2**k for k in range(tile.bit_length()))
    return tuple(Config(tile // e, e) for e in widths if e >= least)


def configs(itemsize: int, align: int | None = None) -> tuple[Config, ...]:
    """Every tile choose() can return for elements of `itemsize` bytes and a launch's ALIGN
    (None: any but 1)."""
    return (*_narrow(itemsize, align), Config(1, tile_outputs(itemsize), wide=True))


def options(
    tile: Config, itemsize: int, align: int, cuda: bool = True, kernel: str | None = None
) -> dict:
    """Compile options of a launch: its warps, and for CUDA, .maxnreg 255 where the kernel
    needs the most registers: float64, and one element per access (ALIGN 1: an address per
    element). Left to itself, ptxas trades a few bytes of spills for one more block per SM
    where a kernel needs a little more than an occupancy step (64 or 128 registers for 256
    threads), as some of those did (8 to 32 bytes); .maxnreg lets it take what they need.
    Vector kernels of 2- and 4-byte dtypes keep its choice: no spills there, and twice the
    occupancy (with .maxnreg, ptxas doubles their registers). The summing kernels
    (SUMMING), which hold two sums an output across their loop over a tile's rows besides
    the backward's registers, take .maxnreg in every dtype (backward_bias's 2-byte vector
    kernels spilled 8 bytes at 128 registers)."""
    if cuda and (itemsize > 4 or align == 1 or kernel in SUMMING):
        return {"num_warps": tile.num_warps, "maxnreg": MAXNREG}
    return {"num_warps": tile.num_warps}


def kernel_tile(kernel: str, tile: Config, itemsize: int, rows: bool = False) -> Config:
    """The tile as `kernel` launches it (rows: with a bias or token counts). float64's
    in-place backward holds three results an output (act(gate) * value and both
    gradients): in 8 warps its GeLU needs a stack frame past 255 registers, so it takes 16,
    half the outputs a thread. So do float64's backward with a bias or counts (their
    addresses and masks besides: GeLU spilled 136 bytes on 8 rows of 256), and
    backward_bias in every dtype, for its sums (in 8 warps float64 GeLU spilled up to 264
    bytes, and bfloat16 with one element an access 32), and so the in-place one with sums."""
    heavy = kernel == "backward_in_place" or (kernel == "backward" and rows)
    if (heavy and itemsize > 4) or kernel in SUMMING:
        return replace(tile, num_warps=2 * WARPS)
    return tile


def alignments(itemsize: int) -> tuple[int, ...]:
    """Every ALIGN alignment() can return for elements of `itemsize` bytes: the powers of two
    up to 16 bytes of elements."""
    widest = max(VECTOR_BYTES // itemsize, 1)
    return tuple(2**k for k in range(widest.bit_length()))


def _tiles(c: Config, runs: int, run_len: int) -> int:
    return triton.cdiv(runs, c.block_r) * triton.cdiv(run_len, c.block_e)


def choose(
    runs: int,
    run_len: int,
    pairs: bool = False,
    itemsize: int = 4,
    align: int | None = None,
    most_runs: int | None = None,
) -> Config:
    """The tile for `runs` runs of `run_len` outputs (interleaved pairs: 2 inputs per output
    in one run) of `itemsize`-byte elements, accessed `align` elements at a time, as the
    module's docstring says; with at most `most_runs` runs a tile (NESTED: the runs of one
    outer block)."""
    if (2 if pairs else 1) * (run_len + tile_outputs(itemsize)) >= WIDE_FROM:
        return configs(itemsize, align)[-1]
    narrow = [c for c in _narrow(itemsize, align) if most_runs is None or c.block_r <= most_runs]
    fewest = min(_tiles(c, runs, run_len) for c in narrow)
    near = (c for c in narrow if 8 * _tiles(c, runs, run_len) <= 9 * fewest)
    return max(near, key=lambda c: c.block_e)


def config(runs: int, run_len: int, pairs: bool = False, itemsize: int = 4) -> dict:
    """Grid, tile constexprs and warps for `runs` runs of `run_len` outputs."""
    c = choose(runs, run_len, pairs, itemsize)
    return {"grid": (_tiles(c, runs, run_len),), **c.meta(), "num_warps": c.num_warps}


def _aligned(align: int, pointers, integers, itemsize: int) -> bool:
    return all(p % (align * itemsize) == 0 for p in pointers) and all(
        i % align == 0 for i in integers
    )


def alignment(pointers, integers, itemsize: int) -> int:
    """The largest power of two ALIGN, at most 16 bytes of elements, such that every pointer
    (an address) is ALIGN elements aligned and every integer (run_len and the strides) is a
    multiple of ALIGN: what the kernels promise the compiler, so that each access is ALIGN
    elements wide."""
    align = max(VECTOR_BYTES // itemsize, 1)
    while align > 1 and not _aligned(align, pointers, integers, itemsize):
        align //= 2
    return align


def _flatten(plan: dict) -> tuple[bool, tuple[int, ...]]:
    """(NESTED, strides): runs in one outer block, or one run per outer block, are evenly
    strided and need no division; their unused run strides become 0."""
    strides = plan["strides"]
    per_outer = plan["runs_per_outer"]
    if per_outer == 1:
        return False, tuple(s if i % 2 == 0 else 0 for i, s in enumerate(strides))
    if per_outer >= plan["runs"]:
        return False, tuple(strides[i + 1] if i % 2 == 0 else 0 for i in range(len(strides)))
    return True, tuple(strides)


def _bias(plan: dict) -> tuple:
    """The plan's (gate_bias, value_bias) pointer views, or (None, None)."""
    bias = plan.get("bias")
    return (None, None) if bias is None else tuple(bias)


def _partials(plan: dict):
    return plan.get("bias_grad_partials")


def kernel_configs(kernel: str, itemsize: int, align: int | None = None) -> tuple[Config, ...]:
    """The tiles `kernel` can launch with (as specialization() chooses them, before
    kernel_tile()): configs(), and for the summing kernels those of at most BIAS_TILE_ROWS
    runs."""
    tiles = configs(itemsize, align)
    if kernel in SUMMING:
        return tuple(c for c in tiles if c.block_r <= BIAS_TILE_ROWS)
    return tiles


def kernel_constexprs(kernel: str, constexprs: dict) -> dict:
    """specialization()'s constexprs that `kernel` takes (the in-place backward takes no
    HAS_BIAS or MASKED), and backward_bias_kernel's STORE_Y (the in-place form's)."""
    names = KERNELS[kernel].arg_names
    chosen = {**constexprs, "STORE_Y": kernel == "backward_in_place_bias"}
    return {name: value for name, value in chosen.items() if name in names}


def kernel_of(kernel: str, plan: dict) -> str:
    """The kernel a launch of `kernel` ("forward", "backward", "backward_in_place") takes for
    the plan: the backward that sums the bias gradient where the plan asks for its
    partials, in place where the plan says so."""
    if kernel == "backward" and _partials(plan) is not None:
        return "backward_in_place_bias" if plan.get("in_place") else "backward_bias"
    return kernel


def _addresses(plan: dict, itemsize: int) -> list[int]:
    """The addresses ALIGN must hold for, as addresses of `itemsize`-byte elements: the
    plan's pointers and the bias's; and the bias gradient's partials (of the compute type),
    whose rows (of run_len) are written ALIGN elements at a time too: an address p of
    elements of s bytes is ALIGN-aligned where p * itemsize / s is ALIGN-aligned in
    `itemsize`-byte elements."""
    addresses = [p.data_ptr() for p in (*plan["pointers"], *_bias(plan)) if p is not None]
    partials = _partials(plan)
    if partials is not None:
        addresses.append(partials.data_ptr() * itemsize // partials.element_size())
    return addresses


def specialization(plan: dict, like: torch.Tensor) -> tuple[Config, dict, tuple[int, ...]]:
    """The call's tile, every other constexpr of its kernel, and its strides."""
    nested, strides = _flatten(plan)
    itemsize = like.element_size()
    align = alignment(_addresses(plan, itemsize), (plan["run_len"], *strides), itemsize)
    constexprs = {
        "ACT": plan["activation"],
        "COMPUTE": tl.float64 if like.dtype == torch.float64 else tl.float32,
        "PAIRS": plan["pairs"],
        "GATE_FIRST": plan["pairs"] and plan["gate_first"],  # see PAIR_LAYOUTS
        "NESTED": nested,
        "HAS_BIAS": plan.get("bias") is not None,
        "MASKED": plan.get("valid_rows") is not None,
        "ALIGN": align,
    }
    most_runs = plan["runs_per_outer"] if nested else None
    if _partials(plan) is not None:  # backward_bias_kernel: BLOCK_R divides a bias tile
        most_runs = min(most_runs or BIAS_TILE_ROWS, BIAS_TILE_ROWS)
    tile = choose(plan["runs"], plan["run_len"], plan["pairs"], itemsize, align, most_runs)
    return tile, constexprs, strides


def partials_dtype(itemsize: int) -> torch.dtype:
    """The bias gradient's partials: of the compute type (float64 for float64 inputs)."""
    return torch.float64 if itemsize > 4 else torch.float32


def check_promises(tile: Config, constexprs: dict, plan: dict, strides, itemsize: int) -> None:
    """Refuses a launch whose constexprs promise the kernel more than the call holds: an
    ALIGN its pointers and strides do not hold (tl.multiple_of would make misaligned vector
    accesses), or, NESTED, tiles of more runs than an outer block has (_run_places); and a
    bias or partials laid out otherwise than the kernels read and write them."""
    align = constexprs["ALIGN"]
    if not _aligned(align, _addresses(plan, itemsize), (plan["run_len"], *strides), itemsize):
        raise RuntimeError(f"glu_fused: ALIGN={align} does not hold for this call's layout")
    if constexprs["NESTED"] and tile.block_r > plan["runs_per_outer"]:
        raise RuntimeError(f"glu_fused: BLOCK_R={tile.block_r} > runs_per_outer, NESTED")
    gate_bias, value_bias = _bias(plan)
    if constexprs["PAIRS"] and gate_bias is not None:
        if (gate_bias.data_ptr() < value_bias.data_ptr()) != constexprs["GATE_FIRST"]:
            raise RuntimeError("glu_fused: the bias's pairs are not in the inputs' order")
    if constexprs["MASKED"] and plan["rows_per_group"] < 1:
        raise RuntimeError("glu_fused: token counts need rows_per_group >= 1")
    partials = _partials(plan)
    if partials is not None:
        if plan.get("bias_tile_rows", BIAS_TILE_ROWS) != BIAS_TILE_ROWS:
            raise RuntimeError(f"glu_fused: bias tiles of {plan['bias_tile_rows']} rows")
        tiles = triton.cdiv(plan["runs"], BIAS_TILE_ROWS)
        expected = (tiles, 2, plan["run_len"])
        dtype = partials_dtype(itemsize)
        if (
            (gate_bias is None) != bool(plan.get("in_place"))
            or partials.dtype != dtype
            or tuple(partials.shape) != expected
            or not partials.is_contiguous()
            or tile.block_r > BIAS_TILE_ROWS
        ):
            raise RuntimeError(f"glu_fused: bias-gradient partials must be {dtype} {expected}")


def grid(kernel: str, tile: Config, plan: dict) -> tuple[int]:
    """Programs of a launch: one a tile, or for the summing kernels one a (tile of
    BIAS_TILE_ROWS runs, BLOCK_E outputs of each)."""
    rows = BIAS_TILE_ROWS if kernel in SUMMING else tile.block_r
    return (triton.cdiv(plan["runs"], rows) * triton.cdiv(plan["run_len"], tile.block_e),)


def arguments(kernel: str, plan: dict, strides) -> tuple:
    """The kernel's arguments before its constexprs: pointers (the bias and counts, None
    where the plan has none: constexprs, so that the plain kernels keep their code), then
    integers and parameters."""
    integers = (plan["runs"], plan["run_len"], plan["runs_per_outer"], *strides)
    floats = (float(plan["alpha"]), float(plan["limit"]))
    if kernel == "backward_in_place":
        return (*plan["pointers"], *integers, *floats)
    rows = (*_bias(plan), plan.get("valid_rows"))
    if kernel in SUMMING:
        rows = (*rows, _partials(plan))
    return (*plan["pointers"], *rows, *integers, plan.get("rows_per_group", 0), *floats)


def launch(kernel: str, plan: dict, like: torch.Tensor) -> None:
    """Launches the forward or backward kernel over a plan's runs, on like's device and its
    current stream."""
    kernel = kernel_of(kernel, plan)
    tile, constexprs, strides = specialization(plan, like)
    check_promises(tile, constexprs, plan, strides, like.element_size())
    modes = (constexprs["HAS_BIAS"], constexprs["MASKED"])
    if modes not in ROW_MODES[kernel]:
        raise RuntimeError(f"glu_fused: {kernel} takes no (HAS_BIAS, MASKED) = {modes}")
    tile = kernel_tile(kernel, tile, like.element_size(), any(modes))
    function = KERNELS[kernel]
    constexprs = kernel_constexprs(kernel, constexprs)
    guard = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        function[grid(kernel, tile, plan)](
            *arguments(kernel, plan, strides),
            **constexprs,
            **tile.meta(),
            **options(
                tile, like.element_size(), constexprs["ALIGN"], torch.version.hip is None, kernel
            ),
        )
