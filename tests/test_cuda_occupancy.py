"""Bytes in flight per SM of every CUDA kernel on an H200 (sm_90), computed without a GPU.

A streaming kernel keeps the memory system busy only if each SM has enough loads in flight:
Little's law gives 4.8 TB/s x ~0.7 us = 3.4 MB over 132 SMs, about 25 KB per SM, and tuning
guides aim at 32 to 64 KB. This test asks for 40 KB (40960 bytes) of every forward and
backward 16-byte-path kernel in float16, bfloat16 and float32.

How each figure is derived:

* Registers per thread and static shared memory: ptxas's report (`-Xptxas -v`) of the sm_90
  build, the same compile as tests/test_cuda_codegen.py's.
* Threads per block: the kernel's `.maxntid` in the PTX, which `__launch_bounds__(kThreads,
  ...)` sets; every launch uses kThreads (glu_cuda.cuh), which the probe prints and the test
  checks against it.
* Resident blocks per SM, from sm_90's limits: 65536 registers, allocated per warp in units of
  256 (the per-thread count rounded up to a multiple of 8); 2048 threads, 64 warps and 32
  blocks; 228 KB of shared memory, 227 KB per block, 1 KB of it reserved per block.
* Bytes a thread has in flight: the global loads it issues before it consumes the first.
  `for_each_item` (glu_cuda.cuh) issues the loads of all `Staging<T, kInputs>::kItems` items
  of a thread before the first is used, each item one access per input tensor (kInputs:
  kForwardInputs or kBackwardInputs, the gate and the value, and in backward the upstream
  gradient), each access `sizeof(Access::Dense)` bytes: a 16-byte pack on the vector paths,
  one element on the scalar path. On the phased paths (misaligned layouts) that is the
  least in flight: an input out of phase with the items loads one 16-byte block more. A host
  program (the probe), compiled with nvcc against glu_cuda.cuh, prints these constants, so
  the figures follow the code. The test checks them against the binary: each aligned vector
  kernel's PTX holds exactly kItems x kInputs 128-bit loads (the items' loops are unrolled,
  and the partial vector at a run's end loads element by element). FP8 output's kernels
  (glu_fp8.cu) stage `Fp8Staging::kItems` items the same way; their PTX holds two more
  items' loads (an item past the kept ones of a long row, in its amax pass and its
  quantizing pass), and they are held to the same 40 KB. The kernels with row options
  (a bias, token counts: the forward's kRows variants, RowsBackwardThread) stage as the
  plain ones, items of the forward and rows of the backward; where there is a bias, the
  forward's and FP8's items load their bias pairs after their inputs (the same loads again,
  L1 hits, not counted as in flight), and the rows backward loads its columns' once.
* Bytes in flight per SM: resident threads x bytes per thread.

The table is printed (pytest -s) and written to occupancy_sm90.txt under the test's tmp dir.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from test_cuda_codegen import (
    DTYPES,
    Staged,
    compile_kernels,
    instance,
    kernel_table,
    pytestmark,  # noqa: F401  (skips this module where nvcc is absent)
    read_staging,
)

# sm_90's per-SM limits.
REGISTERS_PER_SM = 65536
REGISTER_UNIT_PER_WARP = 256
MAX_THREADS_PER_SM = 2048
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_PER_BLOCK = 227 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
WARP = 32

REQUIRED_BYTES_PER_SM = 40960
REQUIRED_DTYPES = ("float16", "bfloat16", "float32")


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> dict[tuple[str, str], Staged]:
    """(dtype, direction) -> the staging constants the kernels are compiled with."""
    return read_staging(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    return compile_kernels("sm_90", tmp_path_factory)


@dataclass
class Row:
    activation: str
    dtype: str
    direction: str
    path: str
    registers: int
    shared: int
    blocks: int
    threads: int
    bytes_per_thread: int

    @property
    def bytes_per_sm(self) -> int:
        return self.threads * self.bytes_per_thread


def resident_blocks(registers: int, shared: int, threads_per_block: int) -> int:
    """Blocks of one kernel an sm_90 SM holds at once."""
    warps = -(-threads_per_block // WARP)
    per_warp = -(-registers * WARP // REGISTER_UNIT_PER_WARP) * REGISTER_UNIT_PER_WARP
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_threads = MAX_THREADS_PER_SM // threads_per_block
    by_warps = MAX_WARPS_PER_SM // warps
    by_shared = (
        SHARED_PER_SM // (shared + SHARED_RESERVED_PER_BLOCK) if shared else MAX_BLOCKS_PER_SM
    )
    return min(by_registers, by_threads, by_warps, by_shared, MAX_BLOCKS_PER_SM)


def test_resident_blocks_follow_sm90_limits():
    """The occupancy arithmetic itself, on cases worked out by hand from sm_90's limits."""
    assert resident_blocks(32, 0, 256) == 8  # thread-limited: 2048 threads
    assert resident_blocks(64, 0, 256) == 4
    assert resident_blocks(65, 0, 256) == 3  # 72 registers allocated
    assert resident_blocks(128, 0, 256) == 2
    assert resident_blocks(129, 0, 256) == 1
    assert resident_blocks(16, 0, 32) == 32  # block-limited
    assert resident_blocks(32, 100 * 1024, 256) == 2  # shared-memory-limited


def rows(sm90, staging) -> list[Row]:
    out = []
    for name, kernel in sm90.kernels.items():
        inst = instance(name)
        staged = staging[inst.dtype, inst.direction]
        ntid = re.search(r"\.maxntid (\d+), 1, 1", kernel.ptx)
        assert ntid, f"{name}: no .maxntid in its PTX (no __launch_bounds__?)"
        assert int(ntid[1]) == staged.threads, f"{name}: launched with a different block size"
        assert kernel.shared <= SHARED_PER_BLOCK
        blocks = resident_blocks(kernel.registers, kernel.shared, staged.threads)
        min_blocks = re.search(r"\.minnctapersm (\d+)", kernel.ptx)
        if min_blocks:
            assert blocks >= int(min_blocks[1]), f"{name}: fewer blocks than its launch bounds"
        access = staged.vector_bytes if inst.vector else staged.scalar_bytes
        out.append(
            Row(
                inst.activation,
                inst.dtype,
                inst.direction,
                inst.path,
                kernel.registers,
                kernel.shared,
                blocks,
                blocks * staged.threads,
                staged.items * staged.inputs * access,
            )
        )
    order = list(DTYPES.values())
    return sorted(
        out, key=lambda r: (r.direction != "forward", r.activation, order.index(r.dtype), r.path)
    )


def format_table(table: list[Row]) -> str:
    return kernel_table(
        table,
        [
            ("registers", 9, lambda r: str(r.registers)),
            ("threads/SM", 10, lambda r: str(r.threads)),
            ("bytes/thread", 12, lambda r: str(r.bytes_per_thread)),
            ("in flight/SM", 12, lambda r: str(r.bytes_per_sm)),
        ],
    )


def test_vector_kernels_load_what_staging_says(sm90, staging):
    """The constants the figures come from match the binary: kItems x kInputs 128-bit loads on
    the aligned vector paths. The phased paths' code holds, for each input of each item, the
    loads of an input in phase and those of one out of phase (one 16-byte block more per
    input): between 2 and 3 times as many."""
    for name, kernel in sm90.kernels.items():
        inst = instance(name)
        if not inst.vector:
            continue
        staged = staging[inst.dtype, inst.direction]
        loads = len(re.findall(r"ld\.global\.nc\.v4\.(?:u|b)32", kernel.ptx))
        expected = staged.items * staged.inputs
        if inst.direction == "fp8":  # and an item past the kept ones, in each of two passes
            expected += 2 * staged.inputs
        if inst.direction in ("fp8", "forward-rows"):  # each item loads its bias pairs too
            expected *= 2
        if inst.direction == "backward-rows":  # the thread's columns' bias pairs, once
            expected += 2
        if inst.phased:
            assert 2 * expected <= loads <= 3 * expected, f"{name}: {loads} 128-bit loads"
        else:
            assert loads == expected, (
                f"{name}: {loads} 128-bit loads, expected {staged.items} items x {staged.inputs}"
            )


def test_bytes_in_flight_per_sm(sm90, staging, tmp_path):
    table = rows(sm90, staging)
    text = format_table(table)
    print("\nBytes in flight per SM on sm_90 (H200)\n" + text)
    (tmp_path / "occupancy_sm90.txt").write_text(text + "\n")
    short = [
        f"{r.activation} {r.dtype} {r.direction} {r.path}: {r.bytes_per_sm} bytes "
        f"({r.registers} registers, {r.threads} threads)"
        for r in table
        if r.path != "scalar"
        and r.dtype in REQUIRED_DTYPES
        and r.bytes_per_sm < REQUIRED_BYTES_PER_SM
    ]
    assert not short, f"below {REQUIRED_BYTES_PER_SM} bytes in flight per SM:\n" + "\n".join(short)
