"""What Triton's compiler makes of the Triton kernels, for sm_90 (and sm_80 in `make
test-full`), without a GPU.

Every kernel the launcher can choose (glu_fused/_triton/launch.py) is a specialization of
forward_kernel or backward_kernel on its constexprs: the activation, the input dtype (which
sets the compute type), (PAIRS, GATE_FIRST), NESTED, the tile (BLOCK_R, BLOCK_E, WIDE and
its warps) and ALIGN. The kernels leave Triton no specialization of its own (checked below
against Triton's own argument binder), so these are all. This file compiles them as the
runtime would (triton.compile of an ASTSource for a GPUTarget, with the ptxas Triton
bundles) and checks that
  * each compiles;
  * none spills registers (ptxas -v: no spill stores or loads, no stack frame);
  * every global load and store is ALIGN elements wide: 16 bytes on the aligned path
    (ld/st.global.v4.b32 for 2- and 4-byte dtypes, ld/st.global.v2.b64 for float64), 8 or
    4 bytes where rows or strides are multiples of fewer elements, one element where
    nothing is aligned.

What is compiled. The whole cross product is thousands of kernels per architecture (the
summary prints how many), beyond a CI budget. The kernels have two parts that do not see
each other: the access code (tile, ALIGN, NESTED, (PAIRS, GATE_FIRST), element size,
direction: addresses, masks, loads, stores, the split and join of pairs) and the element
math (activation, compute type, direction), which runs on registers between the loads and
the stores. Every tile of a dtype has the same outputs per thread (16, or 8 for float64),
so the math needs the same registers in each. Hence:
  * MATH: every activation x dtype x direction x the layouts the launcher pairs with that
    activation (halves; interleaved with the gate first, or second for glu's sigmoid), on
    the widest aligned tile;
  * TILES: every tile x element size x {halves, interleaved} x {aligned, ALIGN 1}, with
    ReLU, the quickest to compile, in the backward kernel, whose accesses include every
    kind the forward's make (float16's access code is bfloat16's);
  * ALIGNS: every ALIGN x dtype x (PAIRS, GATE_FIRST), backward on the widest and the
    narrowest tile, and forward on the widest, halves;
  * NESTED: runs under outer blocks, x element size x direction x {halves, interleaved} x
    {aligned, ALIGN 1}, on the widest tile, and backward on the narrowest too;
  * HEAVY: float64 GeLU, the most registers (near the limit of 255), on every float64 tile;
  * EXAMPLES: the launches of [64, 2 * 4100] float32 and bfloat16 inputs (rows of 4100, not
    a multiple of 16 elements), and the same with ALIGN 1, what Triton's own divisibility
    specialization gave them (its 16 or nothing).
The fused FP8 kernels (glu_fused/_triton/fp8.py: quantize_kernel and the per-tensor
amax_kernel) are compiled apart (FP8_EXAMPLES, their own worker and fixture): the
specializations real calls launch, one for each granularity and its paths (token in one
tile and looping over long rows, group, mx, tensor dynamic and static), scale rule, FP8
type and input dtype, with interleaved and unaligned inputs; each must compile without
spills and read its inputs ALIGN elements at a time.
So every tile, ALIGN, layout, NESTED, activation and dtype is compiled for each
architecture: sm_90 (H100, H200), the GPUs this project is tuned and measured on, in `make
test`; sm_80 too under GLU_FUSED_TEST_FULL=1 (`make test-full`), as each architecture costs a
core for a minute and a half.

The compiles run in subprocesses (this file, run as a script), one per architecture side by
side, without $TRITON_INTERPRET: the test session sets it when there is no GPU, before
triton is imported, and under it the kernels are the interpreter's, which never compiles
them. They run once per session (a module fixture), into a fresh Triton cache, so that the
times printed are compile times.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed")
pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton has no NVIDIA backend")
import triton.language as tl  # noqa: E402
from covering import FULL  # noqa: E402

from glu_fused import _table  # noqa: E402
from glu_fused._triton import launch  # noqa: E402
from glu_fused._triton import math as m  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (90, 80) if FULL else (90,)
TABLE_ARCH = 90
DTYPES = ("float16", "bfloat16", "float32", "float64")
ACTIVATIONS = {a.code: a.name for a in _table.ACTIVATIONS.values()}
DIRECTIONS = tuple(launch.KERNELS)
POINTER_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "float64": "*fp64"}
VECTOR_BYTES = 16
WORKER_TIMEOUT_S = 1800


class Spec(NamedTuple):
    """One specialization: a kernel and every constexpr and option it is compiled with."""

    direction: str
    act: int
    dtype: str
    pairs: bool
    gate_first: bool
    nested: bool
    block_r: int
    block_e: int
    wide: bool
    num_warps: int
    align: int
    maxnreg: int | None
    bias: bool = False
    masked: bool = False

    @property
    def itemsize(self) -> int:
        return getattr(torch, self.dtype).itemsize

    def constexprs(self) -> dict:
        """Every constexpr of its kernel: those the launcher passes, and the bias's and the
        counts' pointers, None (constexprs) where the call has none."""
        constexprs = {
            "ACT": self.act,
            "COMPUTE": tl.float64 if self.dtype == "float64" else tl.float32,
            "PAIRS": self.pairs,
            "GATE_FIRST": self.gate_first,
            "NESTED": self.nested,
            "HAS_BIAS": self.bias,
            "MASKED": self.masked,
            "BLOCK_R": self.block_r,
            "BLOCK_E": self.block_e,
            "WIDE": self.wide,
            "ALIGN": self.align,
        }
        constexprs = launch.kernel_constexprs(self.direction, constexprs)
        names = launch.KERNELS[self.direction].arg_names
        if "gb_ptr" in names and not self.bias:
            constexprs.update(gb_ptr=None, vb_ptr=None)
        if "valid_ptr" in names and not self.masked:
            constexprs["valid_ptr"] = None
        return constexprs


def _spec(direction, act, dtype, layout, nested, tile, align, modes=None) -> Spec:
    """A Spec, with the warps and compile options the launcher gives it; modes: (HAS_BIAS,
    MASKED), by default the kernel's first (backward_bias always has a bias)."""
    modes = launch.ROW_MODES[direction][0] if modes is None else modes
    config = launch.Config(*tile)
    config = launch.kernel_tile(direction, config, _itemsize(dtype), any(modes))
    maxnreg = launch.options(config, _itemsize(dtype), align, kernel=direction).get("maxnreg")
    return Spec(direction, act, dtype, *layout, nested, *_tile(config), align, maxnreg, *modes)


def _with_align(spec: Spec, align: int) -> Spec:
    layout, tile = (spec.pairs, spec.gate_first), (spec.block_r, spec.block_e, spec.wide)
    tile = (*tile, spec.num_warps)
    modes = (spec.bias, spec.masked)
    return _spec(spec.direction, spec.act, spec.dtype, layout, spec.nested, tile, align, modes)


def _tile(config: launch.Config) -> tuple:
    return config.block_r, config.block_e, config.wide, config.num_warps


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize


def _widest(dtype: str) -> tuple:
    """The tile long rows take: one run of a whole tile."""
    return _tile(next(c for c in launch.configs(_itemsize(dtype)) if c.block_r == 1))


def _narrowest(dtype: str, align: int, direction: str = "backward") -> tuple:
    return _tile(launch.kernel_configs(direction, _itemsize(dtype), align)[0])


def _layouts_of(act: int) -> list[tuple[bool, bool]]:
    """(PAIRS, GATE_FIRST) the launcher can pair with an activation: halves, and interleaved
    pairs in the order of its packed functions (glu's gate comes second)."""
    orders = {
        (True, not f.gate_is_second)
        for f in _table.PACKED_FUNCTIONS.values()
        if f.activation.code == act
    }
    return [(False, False), *sorted(orders)]


RELU = _table.RELU.code
GELU = _table.GELU.code
HALVES, PAIRS_GATE_FIRST = launch.PAIR_LAYOUTS[:2]


def math_specs() -> list[Spec]:
    return [
        _spec(d, act, dtype, layout, False, _widest(dtype), launch.alignments(_itemsize(dtype))[-1])
        for d, act, dtype in itertools.product(DIRECTIONS, ACTIVATIONS, DTYPES)
        for layout in _layouts_of(act)
    ]


def tile_specs() -> list[Spec]:
    """Backward kernels: their access code holds every kind of access the forward's does
    (pairs and dense loads, pairs stores; the forward's dense store is addressed as the
    backward's dense load)."""
    return [
        _spec("backward", RELU, dtype, layout, False, _tile(config), align)
        for dtype in ("bfloat16", "float32", "float64")
        for align in (1, launch.alignments(_itemsize(dtype))[-1])
        for config in launch.configs(_itemsize(dtype), align)
        for layout in (HALVES, PAIRS_GATE_FIRST)
    ]


def align_specs() -> list[Spec]:
    backward = [
        _spec("backward", RELU, dtype, layout, False, tile, align)
        for dtype, layout in itertools.product(DTYPES, launch.PAIR_LAYOUTS)
        for align in launch.alignments(_itemsize(dtype))
        for tile in (_widest(dtype), _narrowest(dtype, align))
    ]
    forward = [
        _spec("forward", RELU, dtype, HALVES, False, _widest(dtype), align)
        for dtype in DTYPES
        for align in launch.alignments(_itemsize(dtype))
    ]
    return backward + forward


def nested_specs() -> list[Spec]:
    def tiles(direction, dtype, align):
        narrowest = (_narrowest(dtype, align, direction),) if direction == "backward" else ()
        return (_widest(dtype), *narrowest)

    return [
        _spec(d, RELU, dtype, layout, True, tile, align)
        for d, dtype, layout in itertools.product(
            DIRECTIONS, ("bfloat16", "float32", "float64"), (HALVES, PAIRS_GATE_FIRST)
        )
        for align in (1, launch.alignments(_itemsize(dtype))[-1])
        for tile in tiles(d, dtype, align)
    ]


def heavy_specs() -> list[Spec]:
    return [
        _spec(d, GELU, "float64", HALVES, False, _tile(c), 2, launch.ROW_MODES[d][-1])
        for d in DIRECTIONS
        for c in launch.kernel_configs(d, 8, 2)
    ]


ROW_DIRECTIONS = tuple(d for d in DIRECTIONS if len(launch.ROW_MODES[d]) > 1)
# The launches of plain calls (no bias gradient summed), for the examples.
PLAIN_DIRECTIONS = tuple(
    d for d in DIRECTIONS if (False, False) in launch.ROW_MODES[d] and d not in launch.SUMMING
)


def row_specs() -> list[Spec]:
    """The bias and token counts (HAS_BIAS, MASKED): every mode of every kernel that takes
    them x dtype x {halves, interleaved}, on the widest aligned tile; on the narrowest too,
    and with ALIGN 1, for float32 and bfloat16 (their count loads and partial sums);
    backward_bias's every tile (at most BIAS_TILE_ROWS runs) x element size x {aligned,
    ALIGN 1}, with a bias and counts, in ReLU."""
    modes = [
        _spec(d, RELU, dtype, layout, False, _widest(dtype), _widest_align(dtype), m)
        for d, dtype, layout in itertools.product(
            ROW_DIRECTIONS, DTYPES, (HALVES, PAIRS_GATE_FIRST)
        )
        for m in launch.ROW_MODES[d]
        if m != (False, False)
    ]
    narrow = [
        _spec(d, RELU, dtype, layout, False, _narrowest(dtype, align, d), align, m)
        for d, dtype, layout in itertools.product(
            ROW_DIRECTIONS, ("bfloat16", "float32"), (HALVES, PAIRS_GATE_FIRST)
        )
        for align in (1, _widest_align(dtype))
        for m in launch.ROW_MODES[d][-1:]
    ]
    bias_tiles = [
        _spec("backward_bias", RELU, dtype, HALVES, False, _tile(c), align, (True, True))
        for dtype in ("bfloat16", "float32", "float64")
        for align in (1, _widest_align(dtype))
        for c in launch.kernel_configs("backward_bias", _itemsize(dtype), align)
    ]
    nested = [
        _spec(d, RELU, "bfloat16", HALVES, True, _widest("bfloat16"), 8, (True, True))
        for d in ("forward", "backward", "backward_bias")
    ]
    return modes + narrow + bias_tiles + nested


def _widest_align(dtype: str) -> int:
    return launch.alignments(_itemsize(dtype))[-1]


def launch_spec(direction: str, x: torch.Tensor, function: str) -> Spec:
    """The specialization the launcher picks for `function`'s op on x (halves, dim -1)."""
    from glu_fused._extension import _C

    if direction == "forward":
        _, plan = _C.plan_glu_forward(x, -1, function, "halves", 0.0, 0.0)
    else:
        grad = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype)
        plan = _C.plan_glu_backward(grad, x, -1, function, "halves", 0.0, 0.0)[1]
    tile, c, _ = launch.specialization(plan, x)
    layout = (c["PAIRS"], c["GATE_FIRST"])
    dtype = str(x.dtype).removeprefix("torch.")
    return _spec(direction, c["ACT"], dtype, layout, c["NESTED"], _tile(tile), c["ALIGN"])


EXAMPLE_SHAPE = (64, 2 * 4100)


def example_specs() -> dict[str, Spec]:
    """Rows of 4100 (a multiple of 4, not 16, elements): their launches, and their twins
    with ALIGN 1, what Triton's own specialization made of them before."""
    examples = {}
    for dtype, d in itertools.product((torch.float32, torch.bfloat16), PLAIN_DIRECTIONS):
        spec = launch_spec(d, torch.zeros(EXAMPLE_SHAPE, dtype=dtype), "geglu")
        name = f"{spec.dtype} {list(EXAMPLE_SHAPE)} halves {d}"
        examples[name] = spec
        examples[name + ", ALIGN 1"] = _with_align(spec, 1)
    return examples


def all_specs() -> dict[str, list[Spec]]:
    groups = {
        "MATH": math_specs(),
        "TILES": tile_specs(),
        "ALIGNS": align_specs(),
        "NESTED": nested_specs(),
        "HEAVY": heavy_specs(),
        "ROWS": row_specs(),
        "EXAMPLES": list(example_specs().values()),
    }
    return groups


def cross_product_size() -> int:
    """How many kernels the launcher could choose in all, per architecture."""
    tiles = sum(
        len(launch.ROW_MODES[d]) * len(launch.kernel_configs(d, _itemsize(dtype), a))
        for d in DIRECTIONS
        for dtype in DTYPES
        for a in launch.alignments(_itemsize(dtype))
    )
    layouts_and_nested = len(launch.PAIR_LAYOUTS) * 2
    return len(ACTIVATIONS) * layouts_and_nested * tiles


def table_specs() -> list[Spec]:
    """The instruction-count table's kernels: each activation, float32, halves."""
    return [s for s in math_specs() if s.dtype == "float32" and not s.pairs]


# ---- the fused FP8 kernels: the specializations of real calls ----------------------------

_FP8_COMPUTE = {"fp32": tl.float32, "fp64": tl.float64}


def _fp8_example(kernel, x, function, layout, out_dtype, **options) -> dict:
    """The launch of `kernel` ("quantize" or "amax") that glu_fused/_triton/fp8.py makes for
    `function`'s FP8 call on x, as JSON for the worker."""
    from glu_fused import _fp8
    from glu_fused._extension import _C
    from glu_fused._triton import fp8

    static = options.pop("static", False)
    rows = options.pop("rows", (None, None))  # (bias, valid_tokens)
    args = _fp8.resolve(out_dtype, **options, scale=torch.ones(1) if static else None)
    out, plan = _C.plan_glu_forward(x, -1, function, layout, 1.702, 7.0, *rows)
    config, constexprs, _ = fp8.specialization(plan, x, out.shape[-1], args, static)
    if kernel == "amax":
        constexprs = {name: constexprs[name] for name in fp8._AMAX_CONSTEXPRS}
    if not constexprs["HAS_BIAS"]:  # None pointers: constexprs
        constexprs.update(gb_ptr=None, vb_ptr=None)
    if not constexprs["MASKED"]:
        constexprs["valid_ptr"] = None
    compute = "fp64" if constexprs["COMPUTE"] == tl.float64 else "fp32"
    options = launch.options(config, x.element_size(), constexprs["ALIGN"])
    return {
        "kernel": kernel,
        "dtype": str(x.dtype).removeprefix("torch."),
        "constexprs": {**constexprs, "COMPUTE": compute},
        "block_r": config.block_r,
        "block_e": config.block_e,
        "options": options,
    }


def fp8_examples() -> dict[str, dict]:
    """Every granularity and path, scale rule, FP8 type and dtype, in real launches."""
    e4m3, e5m2, e8m0 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu
    bf16 = torch.zeros(64, 2 * 4096, dtype=torch.bfloat16)
    unaligned = torch.zeros(8, 2 * 257 + 1, dtype=torch.bfloat16)[:, 1:]

    # The bias and counts (glu_fused/_triton/fp8.py: rows of one run each) of [experts,
    # tokens, 2n] inputs: the plan's arguments.
    def rows(x):
        bias = torch.zeros(x.shape[-1], dtype=x.dtype)
        return {"rows": (bias, torch.zeros(x.shape[0], dtype=torch.int32))}

    moe = torch.zeros(4, 16, 2 * 1024, dtype=torch.bfloat16)
    calls = {
        "bfloat16 token": ("quantize", bf16, "swiglu", "halves", e4m3),
        "bfloat16 group128 e8m0": ("quantize", bf16, "swiglu", "halves", e4m3, {
            "granularity": "group", "scale_dtype": e8m0}),
        "bfloat16 mx floor, e5m2": ("quantize", bf16, "clamped_swiglu", "interleaved", e5m2, {
            "granularity": "mx", "scale_rounding": "floor"}),
        "bfloat16 tensor amax": ("amax", bf16, "swiglu", "halves", e4m3, {
            "granularity": "tensor"}),
        "bfloat16 tensor": ("quantize", bf16, "swiglu", "halves", e4m3, {
            "granularity": "tensor"}),
        "bfloat16 tensor static": ("quantize", bf16, "geglu", "halves", e4m3, {"static": True}),
        "float32 token, rows looped": ("quantize", torch.zeros(8, 2 * 8192), "swiglu", "halves",
            e5m2, {"intermediate": "float32"}),
        "float64 group64": ("quantize", torch.zeros(16, 2 * 512, dtype=torch.float64), "geglu",
            "halves", e4m3, {"granularity": "group", "group_size": 64}),
        "float16 token, ALIGN 1, interleaved": ("quantize", unaligned.half(), "swiglu",
            "interleaved", e4m3),
        "bfloat16 mx, ALIGN 1": ("quantize", unaligned[:, :512], "swiglu", "halves", e4m3, {
            "granularity": "mx"}),
        "bfloat16 token, bias and counts": ("quantize", moe, "swiglu", "halves", e4m3,
            rows(moe)),
        "bfloat16 group, bias and counts, interleaved": ("quantize", moe, "swiglu",
            "interleaved", e4m3, {"granularity": "group", **rows(moe)}),
        "bfloat16 tensor amax, bias and counts": ("amax", moe, "geglu", "halves", e4m3, {
            "granularity": "tensor", **rows(moe)}),
        "bfloat16 tensor, bias and counts": ("quantize", moe, "geglu", "halves", e4m3, {
            "granularity": "tensor", **rows(moe)}),
        "float32 token, rows looped, bias and counts": ("quantize",
            torch.zeros(2, 4, 2 * 8192), "swiglu", "halves", e4m3,
            rows(torch.zeros(2, 4, 2 * 8192))),
    }  # fmt: skip
    examples = {}
    for name, (kernel, x, function, layout, out_dtype, *options) in calls.items():
        examples[name] = _fp8_example(kernel, x, function, layout, out_dtype, **dict(*options))
    return examples


def compile_fp8(job: dict, arch: int) -> dict:
    """Compiles one FP8 launch for sm_<arch>: its ptxas report and access widths."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from glu_fused._triton import fp8

    kernel = fp8.quantize_kernel if job["kernel"] == "quantize" else fp8.amax_kernel
    constexprs = {**job["constexprs"], "BLOCK_R": job["block_r"], "BLOCK_E": job["block_e"]}
    constexprs["COMPUTE"] = _FP8_COMPUTE[constexprs["COMPUTE"]]
    pointers = {"q_ptr": "*u8", "s_ptr": "*fp32", "amax_ptr": "*i32", "valid_ptr": "*i32"}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, POINTER_TYPES[job["dtype"]])
        elif name in ("alpha", "limit", "eps"):
            signature[name] = "fp64"
        else:
            signature[name] = "i64"
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs, {}),
            target=GPUTarget("cuda", arch, 32),
            options=job["options"],
        )
    return {
        "seconds": time.perf_counter() - start,
        **_ptxas_report(log.getvalue()),
        "access": _access_widths(compiled.asm["ptx"]),
        "div_rn": len(re.findall(r"\bdiv\.rn\.f32\b", compiled.asm["ptx"])),
    }


# ---- the worker: compiles, in a process without $TRITON_INTERPRET -------------------------


@triton.jit
def _split_cdf(g):
    """GeLU's CDF with the exact tail form only where 1 + erf cancels (g < -2), and
    (1 + erf(g / sqrt 2)) / 2 elsewhere: both sides of tl.where are evaluated. The worker
    compiles the GeGLU kernels with it, to compare with math.gelu_cdf."""
    tail = 0.5 * m._erfc_nonneg(tl.abs(g), m.INV_SQRT2, 0.5)
    central = 0.5 + 0.5 * tl.erf(g * m.INV_SQRT2)
    return tl.where(g < -2.0, tail, central)


def _other_pointers(dtype: str) -> dict[str, str]:
    """Pointers not of the inputs' dtype: the token counts, the bias gradient's partial sums
    (of the compute type)."""
    return {"valid_ptr": "*i32", "sums_ptr": "*fp64" if dtype == "float64" else "*fp32"}


def _signature(kernel, dtype: str, constexprs: dict) -> dict:
    """Argument types as the runtime gives them: pointers of the dtype (the counts int32,
    the partial sums of the compute type; a None pointer is a constexpr), int64 integers
    (the kernels' annotation), float64 alpha and limit."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = _other_pointers(dtype).get(name, POINTER_TYPES[dtype])
        elif name in ("alpha", "limit"):
            signature[name] = "fp64"
        else:
            signature[name] = "i64"
    return signature


def _access_widths(ptx: str) -> dict[str, dict[int, int]]:
    """Global loads and stores by width in bytes: ld.global.v4.b32 is 16."""
    widths = {"ld": collections.Counter(), "st": collections.Counter()}
    pattern = r"\b(ld|st)\.global(?:\.[\w:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b"
    for op, vector, bits in re.findall(pattern, ptx):
        widths[op][int(vector or 1) * int(bits) // 8] += 1
    return {op: dict(counts) for op, counts in widths.items()}


def _ptxas_report(log: str) -> dict:
    used = re.search(r"Used (\d+) registers", log)
    spills = re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log
    )
    if not used or not spills:
        raise RuntimeError(f"no ptxas -v report in:\n{log}")
    stack, stores, loads = map(int, spills.groups())
    return {"registers": int(used[1]), "stack": stack, "spill_stores": stores, "spill_loads": loads}


def _sass_count(cubin: bytes) -> int | None:
    """Instructions in the SASS (cuobjdump -sass), less padding NOPs; None without it."""
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text)
    return sum(op != "NOP" for op in ops) or None


def _float_ops(ptx: str) -> int:
    """PTX instructions on float32 or float64 values (arithmetic, compares, selects)."""
    return len(re.findall(r"^\s*(?:@!?%p\d+\s+)?[a-z][\w.:]*\.f(?:32|64)\s", ptx, re.M))


def compile_spec(spec: Spec, arch: int, count: bool) -> dict:
    """Compiles one specialization for sm_<arch>: its ptxas report, access widths, compile
    time, and (count) its instruction counts."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch.KERNELS[spec.direction]
    constexprs = spec.constexprs()
    source = ASTSource(kernel, _signature(kernel, spec.dtype, constexprs), constexprs, {})
    options = {"num_warps": spec.num_warps}
    if spec.maxnreg is not None:
        options["maxnreg"] = spec.maxnreg
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # ptxas -v, printed with $TRITON_DUMP_PTXAS_LOG
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    record = {
        "seconds": seconds,
        "shared": compiled.metadata.shared,
        **_ptxas_report(log.getvalue()),
    }
    record["access"] = _access_widths(ptx)
    if count:
        record["sass"] = _sass_count(compiled.asm["cubin"])
        record["ptx_float_ops"] = _float_ops(ptx)
    return record


def _binder_plans() -> list[tuple[str, dict, torch.Tensor]]:
    """Real launches (plans of the extension) whose integers and pointers Triton would have
    specialized: aligned and misaligned pointers, integers that equal 1, multiples of 16,
    and past 2^31."""
    from glu_fused._extension import _C

    plans, bias_plans = [], []
    for x in (
        torch.zeros(64, 2 * 4096),
        torch.zeros(5, 2 * 33 + 1)[:, 1:],
        torch.zeros(1, 2 * 16, dtype=torch.bfloat16),
        torch.zeros(3, 2 * 8, 5, dtype=torch.float64).transpose(1, 2),
    ):
        _, plan = _C.plan_glu_forward(x, -1, "swiglu", "interleaved", 0.0, 0.0)
        plans.append(("forward", plan, x))
        grad = torch.zeros(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype)
        plan = _C.plan_glu_backward(grad, x, -1, "glu", "halves", 0.0, 0.0)[1]
        plans.append(("backward", plan, x))
        if x.stride(-1) == 1:  # the in-place form reads the halves where they are
            plan = _C.plan_gated_backward_in_place(grad.clone(), *x.chunk(2, -1), "silu")
            plans.append(("backward_in_place", plan, x))
            plan, _ = _C.plan_gated_backward_in_place_bias(grad.clone(), *x.chunk(2, -1), "silu")
            plans.append(("backward", plan, x))
    huge = dict(plans[0][1], runs=2**31 + 16, outer_stride=2**33)
    plans.append(("forward", huge, plans[0][2]))
    # The bias and counts: a [2, 3, 2 * 64] input, its bias [2 * 64], counts [2]; the
    # backward without and with the bias gradient's partials.
    x = torch.zeros(2, 3, 2 * 64)
    bias, counts = torch.zeros(2 * 64), torch.tensor([1, 3], dtype=torch.int32)
    _, plan = _C.plan_glu_forward(x, -1, "swiglu", "interleaved", 0.0, 0.0, bias, counts)
    bias_plans.append(("forward", plan, x))
    grad = torch.zeros(2, 3, 64)
    for bias_grad in (False, True):
        plan = _C.plan_glu_backward(
            grad, x, -1, "swiglu", "halves", 0.0, 0.0, bias, counts, bias_grad
        )[1]
        bias_plans.append(("backward", plan, x))
    return plans + bias_plans


def check_binder() -> list[str] | None:
    """Triton's own binder on real launch arguments: the argument types and constexprs this
    file compiles with, and no divisibility attribute. Problems found, or None where this
    Triton has no binder to ask."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import create_function_from_signature
    except ImportError:
        return None
    problems = []
    for direction, plan, like in _binder_plans():
        direction = launch.kernel_of(direction, plan)
        kernel = launch.KERNELS[direction]
        tile, constexprs, strides = launch.specialization(plan, like)
        constexprs = launch.kernel_constexprs(direction, constexprs)
        args = launch.arguments(direction, plan, strides)
        binder = create_function_from_signature(kernel.signature, kernel.params, CUDABackend)
        _, spec, _ = binder(*args, **constexprs, **tile.meta())
        dtype = str(like.dtype).removeprefix("torch.")
        nones = {name: None for name, arg in zip(kernel.arg_names, args) if arg is None}
        ours = _signature(kernel, dtype, {**constexprs, **tile.meta(), **nones})
        for name, (kind, value) in zip(kernel.arg_names, spec):
            if kind != ours[name] or (kind != "constexpr" and value not in ("", None)):
                problems.append(f"{direction} {name}: Triton binds ({kind}, {value})")
    return problems


def worker(arch: int, jobs: list[tuple[Spec, bool]], cdf: str) -> dict:
    """Compiles every job for sm_<arch>; with cdf == "split", the GeGLU kernels compile with
    _split_cdf for math.gelu_cdf (patched before anything is compiled)."""
    if cdf == "split":
        m.gelu_cdf = _split_cdf
    start = time.perf_counter()
    records = []
    for spec, count in jobs:
        try:
            records.append({"spec": list(spec), **compile_spec(spec, arch, count)})
        except Exception as e:  # reported by the test, with the specialization
            records.append({"spec": list(spec), "error": f"{type(e).__name__}: {e}"[-2000:]})
    binder = check_binder() if cdf == "kept" else None
    return {
        "arch": arch,
        "triton": triton.__version__,
        "wall": time.perf_counter() - start,
        "records": records,
        "binder": binder,
    }


def fp8_worker(arch: int, jobs: dict[str, dict]) -> dict:
    """Compiles every FP8 launch for sm_<arch>."""
    start = time.perf_counter()
    records = {}
    for name, job in jobs.items():
        try:
            records[name] = compile_fp8(job, arch)
        except Exception as e:  # reported by the test, with the launch's name
            records[name] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
    return {"arch": arch, "wall": time.perf_counter() - start, "records": records}


if __name__ == "__main__":
    _arch, _cdf, _jobs_file, _out_file = sys.argv[1:]
    with open(_jobs_file) as f:
        _loaded = json.load(f)
    if _cdf == "fp8":
        _result = fp8_worker(int(_arch), _loaded)
    else:
        _result = worker(int(_arch), [(Spec(*spec), count) for spec, count in _loaded], _cdf)
    with open(_out_file, "w") as f:
        json.dump(_result, f)
    sys.exit(0)


# ---- the tests ------------------------------------------------------------------------------


def _start_worker(arch: int, jobs, cdf: str, folder) -> tuple:
    """A worker compiling `jobs`: [(Spec, count)], or for cdf "fp8" fp8_examples()."""
    jobs_file, out_file = folder / f"jobs_{arch}_{cdf}.json", folder / f"out_{arch}_{cdf}.json"
    if cdf != "fp8":
        jobs = [[list(spec), count] for spec, count in jobs]
    jobs_file.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        TRITON_CACHE_DIR=str(folder / f"cache_{arch}_{cdf}"),
        TRITON_DUMP_PTXAS_LOG="1",
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
    )
    args = [sys.executable, __file__, str(arch), cdf, str(jobs_file), str(out_file)]
    process = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    return process, out_file


def _finish(process, out_file) -> dict:
    _, stderr = process.communicate(timeout=WORKER_TIMEOUT_S)
    assert process.returncode == 0, f"the compile worker failed:\n{stderr[-4000:]}"
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def codegen(tmp_path_factory) -> dict:
    """Every specialization compiled for each architecture, and the GeGLU kernels with the
    split CDF for TABLE_ARCH: {"groups", "results": {arch: worker output}, "split", "wall"}."""
    folder = tmp_path_factory.mktemp("triton_codegen")
    groups = all_specs()
    counted = set(table_specs())
    unique = list(dict.fromkeys(itertools.chain(*groups.values())))
    jobs = [(spec, spec in counted) for spec in unique]
    split_jobs = [(s, True) for s in table_specs() if s.act == GELU]
    start = time.perf_counter()
    workers = {arch: _start_worker(arch, jobs, "kept", folder) for arch in ARCHS}
    split = _start_worker(TABLE_ARCH, split_jobs, "split", folder)
    results = {arch: _finish(*w) for arch, w in workers.items()}
    return {
        "groups": groups,
        "results": results,
        "split": _finish(*split),
        "wall": time.perf_counter() - start,
    }


def _records(codegen, arch) -> dict[Spec, dict]:
    return {Spec(*r["spec"]): r for r in codegen["results"][arch]["records"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_specialization_compiles(codegen, arch):
    failed = [(spec, r["error"]) for spec, r in _records(codegen, arch).items() if "error" in r]
    assert not failed, f"{len(failed)} failed on sm_{arch}; the first: {failed[0]}"


def test_every_choice_of_the_launcher_is_compiled(codegen):
    """Each value of each constexpr the launcher can choose is compiled (at least once for
    each architecture): every tile of every dtype's configs(), every ALIGN of alignments(),
    every (PAIRS, GATE_FIRST), NESTED, activation, dtype and direction."""
    for arch in ARCHS:
        compiled = set(_records(codegen, arch))
        for dtype in DTYPES:
            itemsize = _itemsize(dtype)
            mine = [s for s in compiled if s.itemsize == itemsize]
            for align in launch.alignments(itemsize):
                assert {_tile(c) for c in launch.configs(itemsize, align)} <= {
                    (s.block_r, s.block_e, s.wide, s.num_warps) for s in mine
                }
            assert set(launch.alignments(itemsize)) <= {
                s.align for s in compiled if s.dtype == dtype
            }
            assert set(ACTIVATIONS) <= {s.act for s in compiled if s.dtype == dtype}
        assert set(launch.PAIR_LAYOUTS) <= {(s.pairs, s.gate_first) for s in compiled}
        assert {s.nested for s in compiled} == {False, True}
        assert {s.direction for s in compiled} == set(DIRECTIONS)
        for d in DIRECTIONS:  # each (HAS_BIAS, MASKED) of each kernel, in every dtype
            for dtype in DTYPES:
                modes = {
                    (s.bias, s.masked) for s in compiled if (s.direction, s.dtype) == (d, dtype)
                }
                assert set(launch.ROW_MODES[d]) <= modes, (d, dtype)
        for itemsize in (2, 4, 8):  # backward_bias's tiles (float16's access code: bfloat16's)
            for align in (1, launch.alignments(itemsize)[-1]):
                tiles = launch.kernel_configs("backward_bias", itemsize, align)
                tiles = [launch.kernel_tile("backward_bias", c, itemsize, True) for c in tiles]
                assert {_tile(c) for c in tiles} <= {
                    (s.block_r, s.block_e, s.wide, s.num_warps)
                    for s in compiled
                    if (s.direction, s.itemsize, s.align) == ("backward_bias", itemsize, align)
                }


def test_the_runtime_specializes_only_on_constexprs(codegen):
    """Triton's binder, given real launch arguments, finds the types and constexprs compiled
    here and no divisibility by 16: no variant of a kernel exists that this file misses."""
    problems = codegen["results"][ARCHS[0]]["binder"]
    if problems is None:
        pytest.skip("this Triton has no create_function_from_signature to bind arguments")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_register_spills(codegen, arch):
    spilled = [
        (spec, r["spill_stores"], r["spill_loads"], r["stack"])
        for spec, r in _records(codegen, arch).items()
        if "error" not in r and (r["spill_stores"] or r["spill_loads"] or r["stack"])
    ]
    assert not spilled, f"{len(spilled)} kernels spill on sm_{arch}; the first: {spilled[0]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_accesses_are_align_elements_wide(codegen, arch):
    """Every global load and store moves ALIGN elements: 16-byte vectors on the aligned path
    (ld/st.global.v4.b32 for 2- and 4-byte dtypes, v2.b64 for float64), narrower ones where
    only they are aligned. Besides them, MASKED kernels load a token count (int32) a row,
    and backward_bias stores its partial sums (float32, float64 for float64) ALIGN at a time
    (up to 16 bytes)."""
    wrong = []
    for spec, r in _records(codegen, arch).items():
        if "error" in r:
            continue
        want = spec.align * spec.itemsize
        for op in ("ld", "st"):
            widths = {int(w) for w in r["access"][op]}
            allowed = {want}
            if op == "ld" and spec.masked:
                allowed.add(4)
            if op == "st" and spec.direction in launch.SUMMING:  # partials: the compute type
                allowed.add(min(max(4, spec.itemsize) * spec.align, VECTOR_BYTES))
            if not {want} <= widths <= allowed:
                wrong.append((spec, op, sorted(widths), sorted(allowed)))
    assert not wrong, f"{len(wrong)} kernels on sm_{arch}; the first: {wrong[0]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_of_4100_keep_vectors(codegen, arch):
    """Rows of 4100 elements, a multiple of 4 but not 16: float32 keeps 16-byte accesses,
    bfloat16 8-byte ones (its value half starts 8 bytes off 16), where Triton's own
    specialization, all or nothing at 16 elements, gave them one element each."""
    records = _records(codegen, arch)
    for name, spec in example_specs().items():
        widths = {int(w) for op in ("ld", "st") for w in records[spec]["access"][op]}
        if name.endswith("ALIGN 1"):
            assert widths == {spec.itemsize}, name
        else:
            assert widths == {16 if spec.dtype == "float32" else 8}, name


def test_the_kept_gelu_cdf_is_the_cheaper(codegen):
    """The GeGLU kernels with math.gelu_cdf (the exact tail form everywhere) against
    _split_cdf (the tail form only where 1 + erf cancels): tl.where evaluates both forms, so
    the split costs erf on top of the tail form."""
    kept = _records(codegen, TABLE_ARCH)
    split = {Spec(*r["spec"]): r for r in codegen["split"]["records"]}
    assert split and all("error" not in r for r in split.values())
    key = "sass" if all(r.get("sass") for r in split.values()) else "ptx_float_ops"
    for spec, r in split.items():
        assert kept[spec][key] <= r[key], (spec.direction, kept[spec][key], r[key])


def _outputs_per_thread(spec: Spec) -> int:
    return spec.block_r * spec.block_e // (32 * spec.num_warps)


def _summary(codegen) -> str:
    lines = [
        f"Triton {codegen['results'][ARCHS[0]]['triton']}: the launcher can choose "
        f"{cross_product_size()} kernels per architecture; compiled "
        + ", ".join(f"{k} {len(v)}" for k, v in codegen["groups"].items())
        + f"; {codegen['wall']:.0f} s wall for everything"
    ]
    for arch in ARCHS:
        records = [(s, r) for s, r in _records(codegen, arch).items() if "error" not in r]
        regs = [r["registers"] for _, r in records]
        spills = sum(bool(r["spill_stores"] or r["spill_loads"] or r["stack"]) for _, r in records)
        aligned = [(s, r) for s, r in records if s.align * s.itemsize == VECTOR_BYTES]
        v16 = sum(
            {int(w) for op in ("ld", "st") for w in r["access"][op]} == {VECTOR_BYTES}
            for _, r in aligned
        )
        lines.append(
            f"sm_{arch}: {len(records)} specializations in {codegen['results'][arch]['wall']:.0f}"
            f" s ({sum(r['seconds'] for _, r in records):.0f} s compiling), registers "
            f"{min(regs)}-{max(regs)}, {spills} with spills, {v16} of {len(aligned)} aligned "
            "kernels with only 16-byte global loads and stores"
        )
    lines.append(f"instructions per output, sm_{TABLE_ARCH}, float32, halves, widest tile:")
    lines.append(f"  {'activation':14s} {'direction':9s} {'SASS':>6s} {'PTX fp':>7s} {'regs':>5s}")
    records = _records(codegen, TABLE_ARCH)
    split = {Spec(*r["spec"]): r for r in codegen["split"]["records"]}
    for spec in sorted(table_specs(), key=lambda s: (s.act, s.direction)):
        for label, r in (("", records[spec]), (" split CDF", split.get(spec))):
            if r is None or "error" in r:
                continue
            per = _outputs_per_thread(spec)
            sass = f"{r['sass'] / per:6.1f}" if r.get("sass") else f"{'-':>6s}"
            lines.append(
                f"  {ACTIVATIONS[spec.act] + label:14s} {spec.direction:9s} {sass} "
                f"{r['ptx_float_ops'] / per:7.1f} {r['registers']:5d}"
            )
    lines.append(f"global loads and stores per thread, by width, sm_{TABLE_ARCH}:")
    for name, spec in example_specs().items():
        access = {
            op: ", ".join(f"{n} x {w} B" for w, n in sorted(records[spec]["access"][op].items()))
            for op in ("ld", "st")
        }
        lines.append(f"  {name}: loads {access['ld']}; stores {access['st']}")
    return "\n".join(lines)


def test_print_summary(codegen, capsys):
    """The summary: specializations, times, registers, spills, vector accesses and the
    instruction counts per activation (printed; fails only if a figure is missing)."""
    text = _summary(codegen)
    with capsys.disabled():
        print("\n" + text)
    assert "instructions per output" in text


# ---- the fused FP8 kernels ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fp8_codegen(tmp_path_factory) -> dict[int, dict]:
    """fp8_examples() compiled for each architecture: {arch: {name: record}}."""
    folder = tmp_path_factory.mktemp("triton_fp8_codegen")
    jobs = fp8_examples()
    workers = {arch: _start_worker(arch, jobs, "fp8", folder) for arch in ARCHS}
    return {arch: _finish(*w)["records"] for arch, w in workers.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_kernels_compile_without_spills_and_read_align_wide(fp8_codegen, arch):
    examples = fp8_examples()
    problems = []
    for name, r in fp8_codegen[arch].items():
        if "error" in r:
            problems.append(f"{name}: {r['error']}")
            continue
        if r["spill_stores"] or r["spill_loads"] or r["stack"]:
            problems.append(
                f"{name}: spills ({r['spill_stores']}, {r['spill_loads']}, {r['stack']})"
            )
        job = examples[name]
        # The scale's divisions are IEEE (div.rn), not Triton's float32 `/` (div.full, or
        # approximate): s = m / FP8_MAX and r = 1 / s, r alone where the scale is static or
        # a floor; at least one div.rn each (a thread holding several blocks has copies).
        c = job["constexprs"]
        divisions = 1 if c.get("STATIC") or c.get("RULE") == 2 else 2  # the floor rule: r only
        if job["kernel"] == "quantize" and r["div_rn"] < divisions:
            problems.append(f"{name}: {r['div_rn']} div.rn.f32 in its PTX")
        width = job["constexprs"]["ALIGN"] * getattr(torch, job["dtype"]).itemsize
        if width not in {int(w) for w in r["access"]["ld"]}:
            problems.append(f"{name}: no {width}-byte loads, {r['access']['ld']}")
    assert {name for name in examples} == set(fp8_codegen[arch])
    assert not problems, f"sm_{arch}:\n" + "\n".join(problems)
    with_loop = [n for n, j in examples.items() if j["constexprs"].get("LOOP")]
    assert with_loop and any(j["kernel"] == "amax" for j in examples.values())
