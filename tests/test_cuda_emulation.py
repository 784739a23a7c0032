"""The CUDA kernels' emulation on the host ($GLU_FUSED_EMULATE_CUDA), beyond what the shared
suites run through it: the errors a launch returns, and which accesses the kernels make."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from glu_fused import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

pytestmark = pytest.mark.skipif(
    not _C.WITH_CUDA, reason="the extension was built without the CUDA kernels: nothing to emulate"
)


def run_linked_probe(source: str, tmp_dir) -> str:
    """Compiles `source`, C++ that calls the kernels' entry points (csrc/glu_kernels.h) from
    `extern "C" void probe(char* out, int size)`, into a library resolved against the
    extension this process loaded, runs it there and returns what it wrote: the built
    kernels' own code, in a second rather than a compile of the kernels."""
    path = os.path.join(tmp_dir, "probe.cpp")
    lib = os.path.join(tmp_dir, "probe.so")
    with open(path, "w") as f:
        f.write(source)
    build = subprocess.run(
        ["g++", "-std=c++17", "-shared", "-fPIC", "-O1", "-DGLU_FUSED_WITH_CUDA",
         f"-I{build_config.CSRC}", path, "-o", lib],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert build.returncode == 0, f"g++ failed on the probe:\n{build.stderr[-4000:]}"
    # The extension's symbols, made global so that the probe's references resolve to them.
    ctypes.CDLL(_C.__file__, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    out = ctypes.create_string_buffer(4096)
    ctypes.CDLL(lib).probe(out, len(out))
    return out.value.decode()


# A launch the GPU would refuse: 2^45 runs need more than 2^31 - 1 blocks. The emulated entry
# points, which return nothing, must throw what the launch returns; nothing is read, as the
# plan fails before any thread runs.
ERROR_PROBE = r"""
#include <cstdio>
#include <stdexcept>
#include <string>

#include "glu_kernels.h"

using namespace glu_fused;

template <typename Call, typename Run>
std::string attempt(const char* what, const Call& call, Run run) {
  try {
    run(call);
    return std::string(what) + ": returned\n";
  } catch (const std::runtime_error& e) {
    return std::string(what) + ": threw " + e.what() + "\n";
  }
}

extern "C" void probe(char* out, int size) {
  PairLayout huge;
  huge.runs = int64_t{1} << 45;
  huge.run_len = 1;
  huge.outer_stride = 2;
  const ActivationCall op{ScalarKind::Float, Activation::Silu, 0.0, 0.0};
  ForwardCall forward{op, huge, nullptr, nullptr, nullptr};
  BackwardCall backward{op, huge, nullptr, nullptr, nullptr, huge, nullptr, nullptr};
  std::string text = attempt("forward", forward, gated_forward_cuda_emulated);
  text += attempt("backward", backward, gated_backward_cuda_emulated);
  // A launch that fits returns: an empty set of runs has nothing to read either.
  forward.in.runs = 0;
  text += attempt("empty forward", forward, gated_forward_cuda_emulated);
  std::snprintf(out, size, "%s", text.c_str());
}
"""


def test_emulated_launch_errors_throw(tmp_path):
    out = run_linked_probe(ERROR_PROBE, str(tmp_path))
    for direction in ("forward", "backward"):
        m = re.search(rf"^{direction}: threw (.*)$", out, re.M)
        assert m, f"the emulated {direction} launch did not throw:\n{out}"
        assert "invalid configuration" in m[1], m[1]
    assert "empty forward: returned" in out, out


# Misaligned layouts on the phased paths: every case is run twice in a subprocess with
# $GLU_FUSED_EMULATE_CUDA, as it is, and with the same values at aligned places in padded
# tensors (which take the aligned 16-byte path). The results must agree bit for bit and match
# the reference; each emulated launch reports its accesses ($GLU_FUSED_EMULATE_CUDA_TRACE),
# after a marker line that says what it computes.
SCRIPT = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import FUNCTION_IDS, FUNCTIONS, fused, random_input, ref  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused.testing import assert_matches  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ROWS = 5


def mark(**what):
    sys.stderr.write("### " + json.dumps(what) + "\n")
    sys.stderr.flush()


def run(fn, kwargs, x, grad, dim, layout, role, meta):
    x = x.detach().requires_grad_()
    mark(direction="forward", role=role, **meta)
    out = fused(fn)(x, dim, layout=layout, **kwargs)
    mark(direction="backward", role=role, **meta)
    (dx,) = torch.autograd.grad(out, x, grad)
    mark(direction="done")
    return out.detach(), dx


def last_dim_case(dtype, layout, hidden, make):
    # (x, grad, aligned x, aligned grad, [(x's part, aligned x's part)], the output's part).
    x = make(hidden)
    padded = -(-hidden // 8) * 8 + 8
    x_al = random_input((ROWS, 2 * padded), dtype)
    if layout == "halves":
        x_al[:, :hidden] = x[:, :hidden]
        x_al[:, padded : padded + hidden] = x[:, hidden:]
        parts = [(slice(0, hidden), slice(0, hidden)),
                 (slice(hidden, 2 * hidden), slice(padded, padded + hidden))]
    else:
        x_al[:, : 2 * hidden] = x
        parts = [(slice(0, 2 * hidden), slice(0, 2 * hidden))]
    return x, x_al, parts, -1, ROWS, hidden


def cases(dtype):
    wide = lambda extra: (lambda h: random_input((ROWS, 2 * h + extra), dtype))  # noqa: E731
    for layout in ("halves", "interleaved"):
        yield f"odd hidden size, {layout}", layout, last_dim_case(
            dtype, layout, 301, lambda h: random_input((ROWS, 2 * h), dtype))
        yield f"sliced at 3, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(7)(h)[:, 3 : 3 + 2 * h])
        yield f"sliced at 1, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(7)(h)[:, 1 : 1 + 2 * h])
        yield f"row stride 2h+5, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(5)(h)[:, : 2 * h])
        # dim 0, runs along a contiguous inner block of odd length: runs_per_outer > 1.
        x = random_input((6, 37), dtype)
        x_al = random_input((6, 48), dtype)
        x_al[:, :37] = x
        yield f"dim 0, inner 37, {layout}", layout, (
            x, x_al, [(slice(0, 37), slice(0, 37))], 0, 3, 37)


checked = 0
for dtype in DTYPES:
    width = 128 // torch.finfo(dtype).bits
    for name, layout, (x, x_al, parts, dim, runs, run_len) in cases(dtype):
        for (fn, kwargs), fid in zip(FUNCTIONS, FUNCTION_IDS):
            meta = dict(case=name, function=fid, dtype=str(dtype), width=width, runs=runs,
                        run_len=run_len)
            out_shape = list(x.shape)
            out_shape[dim] //= 2
            grad = random_input(out_shape, dtype, scale=1.0)
            grad_al_shape = list(x_al.shape)
            grad_al_shape[dim] //= 2
            grad_al = random_input(grad_al_shape, dtype, scale=1.0)
            if dim == 0:
                grad_al[:, : x.shape[1]] = grad
                out_part = (slice(None), slice(0, x.shape[1]))
            else:
                grad_al[:, : grad.shape[1]] = grad
                out_part = (slice(None), slice(0, grad.shape[1]))
            out, dx = run(fn, kwargs, x, grad, dim, layout, "misaligned", meta)
            out_al, dx_al = run(fn, kwargs, x_al, grad_al, dim, layout, "aligned", meta)
            what = f"{fid} {dtype} {name}"
            assert torch.equal(out, out_al[out_part]), f"{what}: forward differs"
            for part, part_al in parts:
                assert torch.equal(dx[:, part], dx_al[:, part_al]), f"{what}: backward differs"
            x64 = x.detach().double().requires_grad_()
            want = ref(fn)(x64, dim, layout=layout, **kwargs)
            (want_dx,) = torch.autograd.grad(want, x64, grad.double())
            assert_matches(out, want, dtype, what)
            assert_matches(dx, want_dx, dtype, what)
            checked += 1

# gated(gate, value) on rows sliced one element in.
for dtype in DTYPES:
    width = 128 // torch.finfo(dtype).bits
    g = random_input((ROWS, 131), dtype)[:, 1:]
    v = random_input((ROWS, 131), dtype)[:, 1:]
    grad = random_input((ROWS, 130), dtype, scale=1.0)
    meta = dict(case="gated, sliced at 1", function="gated-silu", dtype=str(dtype),
                width=width, runs=ROWS, run_len=130)
    results = {}
    for role, (gg, vv) in (("misaligned", (g, v)),
                           ("aligned", (g.contiguous(), v.contiguous()))):
        gg = gg.detach().requires_grad_()
        vv = vv.detach().requires_grad_()
        mark(direction="forward", role=role, **meta)
        out = glu_fused.gated(gg, vv, "silu")
        mark(direction="backward", role=role, **meta)
        results[role] = (out.detach(), *torch.autograd.grad(out, (gg, vv), grad))
        mark(direction="done")
    for a, b in zip(results["misaligned"], results["aligned"]):
        assert torch.equal(a, b), f"gated {dtype}: the two paths differ"
    checked += 1

# Elements not aligned to their size (a buffer read from an odd byte offset): the scalar path,
# bit for bit as the aligned one.
for dtype in DTYPES:
    size = torch.finfo(dtype).bits // 8
    raw = bytearray(size * ROWS * 128 + 1)
    x = torch.frombuffer(raw, dtype=dtype, offset=1, count=ROWS * 128).view(ROWS, 128)
    x.copy_(random_input((ROWS, 128), dtype))
    grad = random_input((ROWS, 64), dtype, scale=1.0)
    meta = dict(case="elements misaligned by a byte", function="swiglu", dtype=str(dtype),
                width=128 // torch.finfo(dtype).bits, runs=ROWS, run_len=64)
    out, dx = run("swiglu", {}, x, grad, -1, "halves", "scalar", meta)
    out_al, dx_al = run("swiglu", {}, x.clone(), grad, -1, "halves", "aligned", meta)
    assert torch.equal(out, out_al) and torch.equal(dx, dx_al), f"{dtype}: the paths differ"
    checked += 1

print(json.dumps({"checked": checked}))
"""


@dataclass
class Launch:
    meta: dict
    path: str
    counts: dict[str, int]


def parse_trace(stderr: str) -> list[Launch]:
    """The emulated launches, each with the marker that preceded it."""
    launches = []
    meta = None
    for line in stderr.splitlines():
        if line.startswith("### "):
            meta = json.loads(line[4:])
        elif m := re.match(r"glu_fused emulated (\w+): path=(\S+) (.*)$", line):
            assert meta and meta["direction"] == m[1], f"a launch without its marker: {line}"
            counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[3])}
            launches.append(Launch(meta, m[2], counts))
    return launches


def run_traced(script: str) -> tuple[dict, list[Launch]]:
    """Runs `script` in a subprocess through the CUDA kernels' emulation, traced and with
    poisoned outputs: the JSON summary it prints last, and its launches."""
    env = {
        **os.environ,
        "GLU_FUSED_EMULATE_CUDA": "1",
        "GLU_FUSED_EMULATE_CUDA_TRACE": "1",
        "GLU_FUSED_POISON_OUTPUTS": "1",
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", script, os.path.join(ROOT, "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads(run.stdout.splitlines()[-1]), parse_trace(run.stderr)


@pytest.fixture(scope="module")
def misaligned_run():
    return run_traced(SCRIPT)


def test_misaligned_layouts_match_the_aligned_path_bitwise(misaligned_run):
    summary, launches = misaligned_run
    # 4 dtypes x 10 cases x 7 functions, and gated() and element-misaligned rows in 4 dtypes.
    assert summary["checked"] == 4 * 10 * 7 + 4 + 4
    # Each checked case: forward and backward, misaligned and aligned.
    assert len(launches) == 4 * summary["checked"]


def test_aligned_copies_take_the_aligned_path(misaligned_run):
    _, launches = misaligned_run
    for launch in launches:
        if launch.meta["role"] == "aligned":
            assert launch.path in ("halves", "pairs"), launch.meta


def test_elements_misaligned_to_their_size_take_the_scalar_path(misaligned_run):
    _, launches = misaligned_run
    scalar = [launch for launch in launches if launch.meta["role"] == "scalar"]
    assert len(scalar) == 2 * 4
    for launch in scalar:
        assert launch.path == "scalar", launch.meta
        assert launch.counts["vector_loads"] == launch.counts["vector_stores"] == 0


def test_misaligned_layouts_take_16_byte_accesses_for_their_bulk(misaligned_run):
    """Outside each run's head and ragged end (fewer than `width` outputs each), every item
    of every misaligned layout loads its inputs and stores its outputs 16 bytes at a time.

    Each output of a run's head or end reads its inputs one element at a time (2 forward, 3
    backward), so the scalar loads count those outputs; the others make up whole items of
    `width` outputs. Each item loads each input by one or two 16-byte loads (two where the
    input is out of phase with the items); forward stores each item's outputs by one 16-byte
    store; backward stores the gate gradients (or the interleaved pairs) of each item by
    16-byte stores, and the value gradients of separate halves by one 16-byte store or
    `width` scalar ones, as their phase allows."""
    _, launches = misaligned_run
    rows = []
    for launch in launches:
        meta = launch.meta
        if meta["role"] != "misaligned":
            continue
        assert launch.path.endswith("-phased"), (launch.path, meta)
        n = launch.counts
        width = meta["width"]
        outputs = meta["runs"] * meta["run_len"]
        inputs = 2 if meta["direction"] == "forward" else 3
        assert n["scalar_loads"] % inputs == 0, meta
        edge = n["scalar_loads"] // inputs
        assert edge <= meta["runs"] * 2 * (width - 1), (n, meta)
        assert (outputs - edge) % width == 0, (n, meta)
        items = (outputs - edge) // width
        assert inputs * items <= n["vector_loads"] <= 2 * inputs * items, (n, meta)
        if meta["direction"] == "forward":
            assert n["vector_stores"] == items, (n, meta)
            assert n["scalar_stores"] == edge, (n, meta)
        else:
            stored = n["vector_stores"] * width + n["scalar_stores"]
            assert stored == 2 * outputs, (n, meta)
            assert n["vector_stores"] >= items, (n, meta)
        if meta["function"] == "swiglu":
            rows.append((meta, launch.path, n, edge))
    # Without a GPU, the figures of a run of the suite are the report of this change.
    print("\nmisaligned layouts, swiglu: 16-byte and element accesses of each emulated launch")
    print(
        f"{'case':<28} {'dtype':<15} {'direction':<9} {'path':<14} {'outputs':>7} "
        f"{'ld16':>6} {'st16':>6} {'ld1':>6} {'st1':>6}"
    )
    for meta, path, n, _ in rows:
        print(
            f"{meta['case']:<28} {meta['dtype']:<15} {meta['direction']:<9} {path:<14} "
            f"{meta['runs'] * meta['run_len']:>7} {n['vector_loads']:>6} {n['vector_stores']:>6} "
            f"{n['scalar_loads']:>6} {n['scalar_stores']:>6}"
        )


# FP8 output (csrc/cuda/glu_fp8.cu) in a subprocess with $GLU_FUSED_EMULATE_CUDA: every case's
# (q, scale) bit for bit the rule applied to the emulated plain result, and each launch's path
# and accesses from the trace. Cases: the blocks of each granularity on aligned, sliced (the
# phased path), interleaved and byte-misaligned rows (the scalar path); rows longer than a
# thread keeps (computed again for q); runs with more lanes than outputs; gated rows merged
# into one run (split by the plan); a per-tensor amax over many blocks of threads.
FP8_SCRIPT = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import random_input  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused import _fp8  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
KEEP_ITEMS = 2 * 256  # items of 16 bytes of inputs a block of threads keeps, per row
MODES = {
    "token": {},
    "group128": {"granularity": "group"},
    "group64-e8m0": {"granularity": "group", "group_size": 64,
                     "scale_dtype": torch.float8_e8m0fnu},
    "mx": {"granularity": "mx"},
    "tensor": {"granularity": "tensor"},
    "tensor-static": {"granularity": "tensor", "scale": torch.tensor([0.01])},
}


def mark(**what):
    sys.stderr.write("### " + json.dumps(what) + "\n")
    sys.stderr.flush()


def misaligned_by_a_byte(shape, dtype):
    size = torch.finfo(dtype).bits // 8
    n = shape[0] * shape[1]
    raw = bytearray(size * n + 1)
    x = torch.frombuffer(raw, dtype=dtype, offset=1, count=n).view(*shape)
    x.copy_(random_input(shape, dtype))
    return x


def wide(rows, last, dtype, offset):
    return random_input((rows, last + 8), dtype)[:, offset : offset + last]


def cases(dtype):
    width = 128 // torch.finfo(dtype).bits
    yield "aligned", "halves", random_input((6, 2 * 384), dtype)
    yield "sliced at 3", "halves", wide(5, 2 * 256, dtype, 3)
    yield "interleaved", "interleaved", random_input((5, 2 * 256), dtype)
    yield "interleaved, sliced at 1", "interleaved", wide(4, 2 * 128, dtype, 1)
    yield "misaligned by a byte", "halves", misaligned_by_a_byte((3, 2 * 128), dtype)
    # Token rows past what a block of threads keeps, with a ragged end; and a row of 3 blocks
    # of 128 (more lanes than items).
    yield "long rows", "halves", random_input((3, 2 * (KEEP_ITEMS * width + 384 + 37)), dtype)
    yield "many rows", "halves", random_input((700, 2 * 128), dtype)


checked = 0
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    width = 128 // torch.finfo(dtype).bits
    for case, layout, x in cases(dtype):
        for mode, options in MODES.items():
            last = x.shape[-1] // 2
            if case == "long rows" and mode != "token":
                continue
            out_dtype = E5M2 if mode.startswith("group64") else E4M3
            meta = dict(case=case, mode=mode, dtype=str(dtype), width=width, rows=x.shape[0],
                        last=last, direction="fp8")
            mark(**{**meta, "direction": "forward"})
            y = glu_fused.swiglu(x, layout=layout)
            mark(**meta)
            q, s = glu_fused.swiglu(x, layout=layout, out_dtype=out_dtype, **options)
            mark(direction="done")
            want_q, want_s = _fp8.quantize(y, _fp8.resolve(out_dtype, **options),
                                           options.get("scale"))
            what = f"{case} {mode} {dtype}"
            assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), what
            assert torch.equal(s.float(), want_s.float()), what
            checked += 1

# gated rows of 37 and 300, contiguous (one run for the plan, split into rows for tokens).
for dtype in (torch.bfloat16, torch.float32):
    for n in (37, 300):
        g, v = random_input((5, n), dtype), random_input((5, n), dtype)
        meta = dict(case=f"gated rows of {n}", mode="token", dtype=str(dtype),
                    width=128 // torch.finfo(dtype).bits, rows=5, last=n, direction="fp8")
        mark(**{**meta, "direction": "forward"})
        y = glu_fused.gated(g, v, "gelu")
        mark(**meta)
        q, s = glu_fused.gated(g, v, "gelu", out_dtype=E4M3)
        mark(direction="done")
        want_q, want_s = _fp8.quantize(y, _fp8.resolve(E4M3))
        assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), meta
        assert torch.equal(s, want_s), meta
        checked += 1

print(json.dumps({"checked": checked}))
"""


@pytest.fixture(scope="module")
def fp8_run():
    summary, launches = run_traced(FP8_SCRIPT)
    return summary, [launch for launch in launches if launch.meta["direction"] == "fp8"]


def test_fp8_results_are_the_rule_on_every_path(fp8_run):
    summary, launches = fp8_run
    # 4 dtypes x (6 cases x 6 modes + long rows x token), and 2 x 2 gated.
    assert summary["checked"] == 4 * (6 * 6 + 1) + 4
    # A dynamic per-tensor scale takes two launches (its amax first), the rest one.
    tensor = [launch for launch in launches if launch.meta["mode"] == "tensor"]
    assert len(launches) == summary["checked"] + len(tensor) // 2


def test_fp8_launches_take_the_path_of_their_layout(fp8_run):
    _, launches = fp8_run
    for launch in launches:
        meta = launch.meta
        if meta["case"] == "misaligned by a byte" or meta["dtype"] == "torch.float64":
            want = "scalar"
        else:
            want = "pairs-phased" if meta["case"].startswith("interleaved") else "halves-phased"
        assert launch.path == want, (launch.path, meta)


def test_fp8_vector_launches_read_16_bytes_at_a_time_and_rows_past_the_kept_twice(fp8_run):
    """Every output of a vector launch reads its inputs in 16-byte loads, but for the ragged
    end of a row (fewer than `width` outputs): one pass of loads for the rows a block of
    threads keeps, and more for the longer ones, whose outputs past the kept ones are
    computed again once the row's amax is known. q goes out in words of `width` bytes where
    the row allows."""
    _, launches = fp8_run
    for launch in launches:
        meta, n = launch.meta, launch.counts
        if launch.path == "scalar":
            assert n["vector_loads"] == 0, meta
            continue
        width, rows, last = meta["width"], meta["rows"], meta["last"]
        ragged = last % width
        twice = 2 if meta["case"] == "long rows" else 1  # the ragged end is past the kept
        assert n["scalar_loads"] == 2 * rows * ragged * twice, (n, meta)
        items = rows * (last // width)
        if meta["case"] == "long rows":
            assert n["vector_loads"] > 2 * items, (n, meta)  # 16-byte loads: 2 inputs an item
        elif "phased" not in launch.path or meta["case"] in ("aligned", "many rows"):
            assert n["vector_loads"] == 2 * items, (n, meta)
        else:  # out of phase: an item's input may take two 16-byte blocks
            assert 2 * items <= n["vector_loads"] <= 4 * items, (n, meta)
        if ragged == 0 and meta["mode"] != "tensor":
            assert n["vector_stores"] == items and n["scalar_stores"] == 0, (n, meta)
