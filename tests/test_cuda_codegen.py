"""What nvcc makes of the CUDA kernels, checked without a GPU.

Each csrc/cuda/*.cu is compiled as the extension compiles it (torch's nvcc flags and
build_config's), for the architectures the kernels are tuned for (sm_90; sm_80 too in `make
test-full`), with `-Xptxas -v` and the PTX kept. Every kernel must fit its registers (no
spills, no stack frame, no local memory), and each 16-byte path kernel must move its data with
128-bit global loads and stores.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension
from covering import FULL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

CUDA_HOME = build_config.find_cuda_home()
KERNEL_SOURCES = build_config.cuda_sources()
pytestmark = pytest.mark.skipif(
    CUDA_HOME is None or not KERNEL_SOURCES, reason="no nvcc, or no CUDA kernels to compile"
)

# sm_90 (H100, H200: what the kernels are tuned and measured on) always; sm_80 too in `make
# test-full` (each architecture's compile costs about 45 s of a core).
ARCHS = ("sm_90", "sm_80") if FULL else ("sm_90",)
# The kernel templates' tag for the 16-byte path (the other is ScalarAccess).
VECTOR_PATH = "12VectorAccess"
DTYPES = {"6__half": "float16", "13__nv_bfloat16": "bfloat16", "f": "float32", "d": "float64"}


def activation_names() -> dict[int, str]:
    """glu_math.h's `enum class Activation`: value -> name."""
    with open(os.path.join(build_config.CSRC, "glu_math.h")) as f:
        body = re.search(r"enum class Activation : int \{(.*?)\};", f.read(), re.S)[1]
    return {int(v): name for name, v in re.findall(r"(\w+) = (\d+)", body)}


@dataclass(frozen=True)
class Instance:
    """What a kernel's mangled name says of it: glu_kernel<{Forward,Backward}Thread<A, T,
    {VectorAccess<T, pairs>, ScalarAccess<T>}>>, or glu_phased_kernel<Fp8Thread<...>>; with
    RowOptions (a bias, token counts), ForwardThread<..., true> and RowsBackwardThread."""

    activation: str
    dtype: str
    # "forward", "backward", "fp8"; "forward-rows", "backward-rows": RowOptions' kernels.
    direction: str
    # 16-byte accesses: "halves", "pairs", and the same "-phased" (misaligned layouts);
    # else "scalar".
    path: str

    @property
    def vector(self) -> bool:
        return self.path != "scalar"

    @property
    def phased(self) -> bool:
        return self.path.endswith("-phased")


def instance(name: str) -> Instance:
    m = re.search(
        r"\d(Forward|Backward|Fp8|RowsBackward)ThreadILNS_10ActivationE(\d+)"
        r"E(6__half|13__nv_bfloat16|f|d)"
        r"NS0_(12VectorAccess|12ScalarAccess)I(?:S\d+_|\w)(?:Lb([01])ELb([01]))?",
        name,
    )
    assert m, f"cannot read the kernel's template arguments from {name}"
    direction, act, dtype, access, pairs, phased = m.groups()
    path = "scalar"
    if access == "12VectorAccess":
        path = ("pairs" if pairs == "1" else "halves") + ("-phased" if phased == "1" else "")
    direction = {"RowsBackward": "backward-rows"}.get(direction, direction.lower())
    # ForwardThread's last template argument, kRows.
    if direction == "forward" and re.search(r"ELb1EEEEEvT_$", name):
        direction = "forward-rows"
    return Instance(activation_names()[int(act)], DTYPES[dtype], direction, path)


@dataclass
class Kernel:
    name: str
    registers: int = -1
    stack_frame: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = 0  # static shared memory, bytes
    ptx: str = field(default="", repr=False)


def nvcc_flags() -> list[str]:
    plan = build_config.plan("13.0", environ={**os.environ, "GLU_FUSED_CUDA": "1"})
    return [
        *cpp_extension.COMMON_NVCC_FLAGS,
        *plan.nvcc_flags,
        "-std=c++17",
        f"-I{build_config.CSRC}",
    ]


def parse_ptxas(log: str) -> dict[str, Kernel]:
    """ptxas -v's report: per entry, its registers, stack frame and spills."""
    kernels: dict[str, Kernel] = {}
    current = None
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = kernels.setdefault(m[1], Kernel(m[1]))
        elif m := re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        ):
            current.stack_frame, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif m := re.search(r"Used (\d+) registers", line):
            current.registers = int(m[1])
            if m := re.search(r"(\d+) bytes smem", line):
                current.shared = int(m[1])
    return kernels


def split_ptx(ptx: str) -> dict[str, str]:
    """Each .entry's name and body."""
    bodies = {}
    for chunk in re.split(r"^(?=(?:\.visible )?\.entry )", ptx, flags=re.M)[1:]:
        name = re.match(r"(?:\.visible )?\.entry (\S+?)\(", chunk)[1]
        bodies[name] = chunk
    return bodies


@dataclass
class Build:
    """What nvcc made of every .cu file for one architecture: each kernel's report and PTX,
    and the cubin of each source."""

    arch: str
    kernels: dict[str, Kernel]
    cubins: list[str]


_BUILDS: dict[str, Build] = {}


def session_folder(tmp_path_factory) -> Path:
    """A folder this test session's pytest-xdist workers share (the parent of their own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def compile_kernels(arch: str, tmp_path_factory) -> Build:
    """Every kernel of every .cu file, compiled for `arch`: once per test session, by
    whichever process asks first (tests/test_cuda_*.py share it, on any xdist worker); the
    others wait for it and read what it wrote."""
    if arch in _BUILDS:
        return _BUILDS[arch]
    out = session_folder(tmp_path_factory) / f"nvcc-{arch}"
    with open(f"{out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = out / "build.json"
        if not saved.exists():
            out.mkdir(exist_ok=True)
            build = _compile(arch, out)
            saved.write_text(json.dumps(dataclasses.asdict(build)))
    data = json.loads(saved.read_text())
    kernels = {name: Kernel(**k) for name, k in data["kernels"].items()}
    _BUILDS[arch] = Build(arch, kernels, data["cubins"])
    return _BUILDS[arch]


def _compile(arch: str, out: Path) -> Build:
    found: dict[str, Kernel] = {}
    cubins = []
    for source in KERNEL_SOURCES:
        stem = os.path.splitext(os.path.basename(source))[0]
        cubin = out / f"{stem}.cubin"
        run = subprocess.run(
            [
                os.path.join(CUDA_HOME, "bin", "nvcc"),
                f"-arch={arch}",
                "-cubin",
                "-Xptxas",
                "-v",
                "--keep",
                f"--keep-dir={out}",
                *nvcc_flags(),
                source,
                "-o",
                str(cubin),
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, f"nvcc failed on {source}:\n{run.stderr[-4000:]}"
        report = parse_ptxas(run.stderr)
        ptx = split_ptx((out / f"{stem}.ptx").read_text())
        assert report.keys() == ptx.keys(), "ptxas's report and the PTX name different kernels"
        for name, kernel in report.items():
            kernel.ptx = ptx[name]
        found.update(report)
        cubins.append(str(cubin))
    return Build(arch, found, cubins)


def kernel_table(rows, columns) -> str:
    """A text table with a line per kernel row: its activation, dtype, direction and path, then
    `columns`, each (header, width, cell), cell(row) giving the right-aligned text."""
    keys = [
        ("kernel", 12, "activation"),
        ("dtype", 9, "dtype"),
        ("direction", 13, "direction"),
        ("path", 13, "path"),
    ]
    head = " ".join([f"{h:<{w}}" for h, w, _ in keys] + [f"{h:>{w}}" for h, w, _ in columns])
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{getattr(r, a):<{w}}" for _, w, a in keys]
        lines.append(" ".join(cells + [f"{cell(r):>{w}}" for _, w, cell in columns]))
    return "\n".join(lines)


def cuda_tool(name: str) -> str | None:
    """A CUDA binary tool (cuobjdump, nvdisasm): the toolkit's, else the copy that Triton
    bundles (found without importing triton); None where neither has it."""
    candidates = [os.path.join(CUDA_HOME, "bin")] if CUDA_HOME else []
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        triton_dir = list(spec.submodule_search_locations)[0]
        candidates.append(os.path.join(triton_dir, "backends", "nvidia", "bin"))
    for directory in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run_host_probe(source: str, tmp_dir) -> str:
    """Compiles `source` (a host program that may include the kernels' headers) with nvcc as
    the extension is compiled, runs it, and returns what it printed."""
    path = os.path.join(tmp_dir, "probe.cu")
    exe = os.path.join(tmp_dir, "probe")
    with open(path, "w") as f:
        f.write(source)
    build = subprocess.run(
        [os.path.join(CUDA_HOME, "bin", "nvcc"), "-arch=sm_90", *nvcc_flags(), path, "-o", exe],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"nvcc failed on the probe:\n{build.stderr[-4000:]}"
    run = subprocess.run([exe], capture_output=True, text=True)
    assert run.returncode == 0, f"the probe failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    return run.stdout


@pytest.fixture(scope="module", params=ARCHS)
def kernels(request, tmp_path_factory) -> dict[str, Kernel]:
    """Every kernel of every .cu file, compiled for one architecture."""
    return compile_kernels(request.param, tmp_path_factory).kernels


# Forward and backward, each: 6 activations x 4 dtypes x 5 paths (scalar; halves and pairs,
# aligned or phased). FP8: 6 activations x (3 dtypes x 3 paths (scalar, phased halves and
# pairs), and float64's scalar path). RowOptions' forward and backward: as FP8's, each.
PLAIN_KERNELS = 2 * 6 * 4 * 5
FP8_KERNELS = 6 * (3 * 3 + 1)
ROWS_KERNELS = 2 * FP8_KERNELS


def test_every_entry_point_is_compiled(kernels):
    assert len(kernels) == PLAIN_KERNELS + FP8_KERNELS + ROWS_KERNELS
    paths = {instance(name).path for name in kernels}
    assert paths == {"scalar", "halves", "pairs", "halves-phased", "pairs-phased"}
    for direction, count in (("fp8", FP8_KERNELS), ("forward-rows", ROWS_KERNELS // 2),
                             ("backward-rows", ROWS_KERNELS // 2)):  # fmt: skip
        found = [instance(name) for name in kernels if instance(name).direction == direction]
        assert len(found) == count, direction
        assert {i.path for i in found if i.dtype == "float64"} == {"scalar"}, direction
        assert {i.path for i in found} == {"scalar", "halves-phased", "pairs-phased"}, direction
    for kernel in kernels.values():
        assert kernel.registers > 0 and kernel.stack_frame >= 0, kernel.name


def test_no_kernel_spills_or_uses_local_memory(kernels):
    for kernel in kernels.values():
        what = f"{kernel.name}: {kernel.registers} registers"
        assert kernel.spill_stores == 0 and kernel.spill_loads == 0, f"{what} spill"
        assert kernel.stack_frame == 0, f"{what}, {kernel.stack_frame} bytes of stack frame"
        assert ".local" not in kernel.ptx, f"{what} use local memory"


# The store of an FP8 item's outputs: one byte an output of 16 bytes of inputs.
FP8_STORES = {"float16": r"st\.global\.v2\.(u|b)32", "bfloat16": r"st\.global\.v2\.(u|b)32",
              "float32": r"st\.global\.(u|b)32"}  # fmt: skip


def test_vector_paths_move_data_in_128_bit_accesses(kernels):
    vector = [k for k in kernels.values() if VECTOR_PATH in k.name]
    assert len(vector) == 4 * PLAIN_KERNELS // 5 + 3 * (6 * 3 * 2)
    for kernel in vector:
        inst = instance(kernel.name)
        assert re.search(r"ld\.global\.nc\.v4\.(u|b)32", kernel.ptx), (
            f"{kernel.name}: no 128-bit load"
        )
        store = (
            FP8_STORES[inst.dtype] if inst.direction == "fp8" else r"st\.global(\.wb)?\.v4\.(u|b)32"
        )
        assert re.search(store, kernel.ptx), f"{kernel.name}: no store of a whole item"


STAGING_PROBE = r"""
#include <cstdio>

#include "cuda/glu_cuda.cuh"

using namespace glu_fused::cuda;

template <typename T, int kInputs>
void print(const char* dtype, const char* direction) {
  using S = Staging<T, kInputs>;
  std::printf("%s %s %d %d %d %d %d\n", dtype, direction, kInputs, S::kItems, kThreads,
              static_cast<int>(sizeof(typename VectorAccess<T, false, false>::Dense)),
              static_cast<int>(sizeof(typename ScalarAccess<T>::Dense)));
}

template <typename T>
void print_both(const char* dtype) {
  print<T, kForwardInputs>(dtype, "forward");
  print<T, kBackwardInputs>(dtype, "backward");
  // RowOptions' kernels stage as the plain ones: the forward's items, the backward's rows
  // (a bias is loaded after an item's inputs, or once a thread: not counted as in flight).
  print<T, kForwardInputs>(dtype, "forward-rows");
  print<T, kBackwardInputs>(dtype, "backward-rows");
  std::printf("%s fp8 %d %d %d %d %d\n", dtype, Fp8Staging::kInputs, Fp8Staging::kItems,
              kThreads, static_cast<int>(sizeof(typename VectorAccess<T, false, false>::Dense)),
              static_cast<int>(sizeof(typename ScalarAccess<T>::Dense)));
}

int main() {
  print_both<__half>("float16");
  print_both<__nv_bfloat16>("bfloat16");
  print_both<float>("float32");
  print_both<double>("float64");
}
"""


@dataclass(frozen=True)
class Staged:
    """How a direction's threads stage their loads for one dtype (glu_cuda.cuh's Staging):
    `items` items of `inputs` loads, of `vector_bytes` (a pack) or `scalar_bytes` (an
    element), by blocks of `threads`."""

    inputs: int
    items: int
    threads: int
    vector_bytes: int
    scalar_bytes: int

    @property
    def width(self) -> int:
        """Outputs of an item on the vector paths."""
        return self.vector_bytes // self.scalar_bytes


def read_staging(tmp_dir) -> dict[tuple[str, str], Staged]:
    """(dtype, direction) -> the staging constants the kernels are compiled with, as a host
    program compiled against glu_cuda.cuh prints them."""
    out = run_host_probe(STAGING_PROBE, str(tmp_dir))
    table = {}
    for line in out.splitlines():
        dtype, direction, *numbers = line.split()
        table[dtype, direction] = Staged(*map(int, numbers))
    assert {dtype for dtype, _ in table} == set(DTYPES.values())
    return table
