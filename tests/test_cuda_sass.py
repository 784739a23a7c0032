"""SASS instructions per output element of the CUDA kernels' vector paths on sm_90.

At 4.3 TB/s, an H200 running a bfloat16 forward (6 bytes an element) has about 45 FP32
instructions per element (128 lanes x 132 SMs x 1.98 GHz / 0.72e12 elements/s) before the
arithmetic, not memory, sets its speed, and 8 times fewer MUFU (16 lanes an SM). This test
counts, from the compiled sm_90 cubin, what each activation and dtype spends, and prints the
table (pytest -s; also written to sass_sm90.txt under the test's tmp dir). There is no
threshold, only sanity checks: the figures are for whoever changes the element math.

Method. `nvdisasm -gi` lists each kernel's SASS with its source lines, inlining included
(the extension is compiled with -lineinfo). A kernel's thread runs straight through: its
prologue (its run, part and lane; run offsets; phases), then the loads and the arithmetic
of all its full items, unrolled. Counted are the instructions of that main path, which is
the whole kernel less:

* the edges: the run's head and the item its end cuts short, which take the scalar path; an
  instruction is on it where its source (or an inlined-at site) is one of the lines of
  for_each_item (glu_cuda.cuh) that call `edge(...)`;
* the slow paths that ptxas keeps out of line (the IEEE division's and reciprocal's, for
  operands near the limits of the range): the subroutines placed after the kernel's body,
  and the stubs that call them, which a taken branch skips;
* padding (NOP, and the self-branch that ends the code).

Instructions per element = main-path instructions / (kItems x width), the outputs of a
thread's full items, so the prologue's cost is spread over them. Branch-free code is
counted once per element; the few data-dependent branches of the math (the division's range
check) are counted as if taken, the fast way. "FP32" counts the FP32 pipe and special-function
unit (FADD, FMUL, FFMA, FMNMX, FSEL, FSET, FSETP, FCHK, FRND, MUFU); MUFU is shown alone too;
"FP64" counts DADD, DMUL, DFMA, DSETP, DMNMX; "other" everything else (integer, conversions
and packing, loads and stores, control).

Activations: Sigmoid (glu), Silu (swiglu), Gelu (geglu, erf), GeluTanh (geglu tanh), Relu
(reglu), ClampedSilu (gpt-oss clamped swiglu).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field

import pytest
from test_cuda_codegen import (
    DTYPES,
    compile_kernels,
    cuda_tool,
    instance,
    kernel_table,
    pytestmark,  # noqa: F401  (skips this module where nvcc is absent)
    read_staging,
)

import build_config

FP32 = {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSET", "FSETP", "FCHK", "FRND", "MUFU"}
FP64 = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX"}
PADDING = {"NOP"}


@dataclass
class Instruction:
    opcode: str  # e.g. "FFMA", "LDG" (the mnemonic before its first '.')
    text: str
    frames: tuple[tuple[str, int], ...]  # (file name, line): the source and its inlined-at sites


@dataclass
class Function:
    name: str
    # Instructions and labels in order: an Instruction, or a str for a label.
    entries: list = field(default_factory=list)


def disassemble(cubin: str) -> dict[str, Function]:
    """Every function of a cubin, from `nvdisasm -gi -c`."""
    nvdisasm = cuda_tool("nvdisasm")
    run = subprocess.run([nvdisasm, "-gi", "-c", cubin], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    functions: dict[str, Function] = {}
    current = None
    frames: tuple[tuple[str, int], ...] = ()
    pending: list[tuple[str, int]] = []
    for line in run.stdout.splitlines():
        if m := re.match(r"^\.text\.(\S+):$", line):
            current = functions.setdefault(m[1], Function(m[1]))
            frames, pending = (), []
        elif current is None:
            continue
        elif line.lstrip().startswith("//##"):
            for path, number in re.findall(r'"([^"]+)", line (\d+)', line):
                pending.append((os.path.basename(path), int(number)))
        elif m := re.match(r"^\s+/\*[0-9a-f]+\*/\s+(.*?)\s*;", line):
            if pending:
                frames, pending = tuple(pending), []
            text = re.sub(r"^@!?U?P\w+\s+", "", m[1])
            current.entries.append(Instruction(text.split()[0].split(".")[0], m[1], frames))
        elif m := re.match(r"^(\S+):$", line):
            current.entries.append(m[1])
    return functions


def edge_lines() -> set[tuple[str, int]]:
    """The lines of for_each_item that call the edge (head and cut-short item) code."""
    with open(os.path.join(build_config.CSRC, "cuda", "glu_cuda.cuh")) as f:
        lines = f.read().splitlines()
    calls = [i + 1 for i, line in enumerate(lines) if re.search(r"\bedge\(", line)]
    found = {("glu_cuda.cuh", number) for number in calls}
    assert len(found) >= 2, "for_each_item no longer calls edge(...): update this test"
    return found


@dataclass
class Split:
    main: list[Instruction]
    edge: int
    cold: int


def split(function: Function, edges: set[tuple[str, int]]) -> Split:
    """The main path of a kernel, and the count of what is left out of it."""
    entries = function.entries
    # Subroutines ($__internal_...) come after the body.
    end = next(
        (i for i, e in enumerate(entries) if isinstance(e, str) and e.startswith("$")),
        len(entries),
    )
    cold = sum(isinstance(e, Instruction) for e in entries[end:])
    skipped = set()
    for i, e in enumerate(entries[:end]):
        # `@P BRA L; ...; CALL ...; L:` : a stub that calls a slow path, branched over.
        if isinstance(e, Instruction) and e.opcode == "BRA" and e.text.startswith("@"):
            target = re.search(r"\(([^)]+)\)", e.text)[1]
            j = next((k for k in range(i + 1, end) if isinstance(entries[k], str)), end)
            stub = entries[i + 1 : j]
            if j < end and entries[j] == target and any(s.opcode == "CALL" for s in stub):
                skipped.update(range(i + 1, j))
    main, edge = [], 0
    previous_label = None
    for i, e in enumerate(entries[:end]):
        if isinstance(e, str):
            previous_label = e
            continue
        if i in skipped:
            cold += 1
        elif e.opcode in PADDING or (e.opcode == "BRA" and f"({previous_label})" in e.text):
            pass
        elif any(frame in edges for frame in e.frames):
            edge += 1
        else:
            main.append(e)
        previous_label = None
    return Split(main, edge, cold)


@dataclass
class Row:
    activation: str
    dtype: str
    direction: str
    path: str
    elements: int
    counts: Counter

    def per_element(self, what: str) -> float:
        return self.counts[what] / self.elements


def classify(instructions: list[Instruction]) -> Counter:
    counts = Counter(total=len(instructions))
    for ins in instructions:
        if ins.opcode in FP32:
            counts["fp32"] += 1
            counts["mufu"] += ins.opcode == "MUFU"
        elif ins.opcode in FP64:
            counts["fp64"] += 1
        else:
            counts["other"] += 1
    return counts


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> list[Row]:
    if cuda_tool("nvdisasm") is None:
        pytest.skip("no nvdisasm in the CUDA toolkit or in Triton's bundle")
    build = compile_kernels("sm_90", tmp_path_factory)
    staging = read_staging(tmp_path_factory.mktemp("probe"))
    edges = edge_lines()
    rows = []
    for cubin in build.cubins:
        for name, function in disassemble(cubin).items():
            # The plain kernels' items (for_each_item, whose edge lines split the SASS), and
            # the forward's with row options (the same thread body); FP8 output's
            # (glu_fp8.cu) and the rows backward's have their own loops: their instructions
            # are not tabled.
            if name not in build.kernels or not instance(name).vector:
                continue
            if instance(name).direction in ("fp8", "backward-rows"):
                continue
            inst = instance(name)
            staged = staging[inst.dtype, inst.direction]
            assert any(i.frames for i in function.entries if isinstance(i, Instruction)), (
                f"{name}: no source lines in the SASS (is the extension still built -lineinfo?)"
            )
            parts = split(function, edges)
            assert parts.edge > 0, f"{name}: no instruction attributed to the edges"
            assert any(i.opcode == "LDG" and ".128" in i.text for i in parts.main), name
            assert any(i.opcode == "STG" and ".128" in i.text for i in parts.main), name
            elements = staged.items * staged.width
            rows.append(
                Row(
                    inst.activation,
                    inst.dtype,
                    inst.direction,
                    inst.path,
                    elements,
                    classify(parts.main),
                )
            )
    order = list(DTYPES.values())
    rows.sort(key=lambda r: (r.direction != "forward", r.activation, order.index(r.dtype), r.path))
    return rows


def format_table(rows: list[Row]) -> str:
    labels = {"total": "total", "fp32": "FP32", "mufu": "MUFU", "fp64": "FP64", "other": "other"}
    per_element = [
        (f"{label}/el", 8, lambda r, k=k: f"{r.per_element(k):.1f}") for k, label in labels.items()
    ]
    return kernel_table(rows, [("elem/thr", 8, lambda r: str(r.elements)), *per_element])


def test_instructions_per_element(table, tmp_path):
    # Every vector kernel: 6 activations x 4 dtypes x 4 paths, both directions; and the
    # forward's with row options: 6 activations x 3 dtypes x 2 (phased) paths.
    assert len(table) == 2 * 6 * 4 * 4 + 6 * 3 * 2
    text = format_table(table)
    print("\nSASS instructions per output element, sm_90 (main path; see the docstring)\n" + text)
    (tmp_path / "sass_sm90.txt").write_text(text + "\n")
    for r in table:
        what = f"{r.activation} {r.dtype} {r.direction} {r.path}"
        arithmetic = "fp64" if r.dtype == "float64" else "fp32"
        assert r.counts[arithmetic] > 0, f"{what}: no {arithmetic} arithmetic"
        assert 1 <= r.per_element("total") < 1000, what
        if r.dtype != "float64":
            assert r.counts["fp64"] == 0, f"{what}: FP64 arithmetic in a float kernel"
