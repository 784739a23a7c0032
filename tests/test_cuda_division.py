"""No CUDA thread divides 64-bit integers: a run's offset (PairLayout::run_offset) is one
multiplication for a split along the last dim, and a multiply-high by a magic number for the
other splits (RunOffsets, glu_cuda.cuh). A 64-bit division would cost each thread a call to
a ~70-instruction subroutine.

Checked in the PTX: nvcc writes a 64-bit `/` or `%` as one div.s64/div.u64/rem.s64/rem.u64
instruction, which ptxas expands; a control kernel shows that the check sees them. The magic
numbers are checked against `/` and `%` on the host, where the kernels' code also runs.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from test_cuda_codegen import (
    ARCHS,
    CUDA_HOME,
    compile_kernels,
    instance,
    nvcc_flags,
    pytestmark,  # noqa: F401  (skips this module where nvcc is absent)
    run_host_probe,
)

DIVISION = re.compile(r"\b(?:div|rem)\.[su]64\b")

CONTROL = r"""
#include <cstdint>
__global__ void offsets(const int64_t* runs, int64_t runs_per_outer, int64_t* out) {
  const int64_t r = runs[threadIdx.x];
  out[threadIdx.x] = (r / runs_per_outer) * 7 + (r % runs_per_outer) * 3;
}
"""

PROBE = r"""
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/glu_cuda.cuh"

using glu_fused::PairLayout;
using glu_fused::cuda::RunOffsets;

int checked = 0;
int wrong = 0;

// RunOffsets gives the quotient with outer_stride 1, run_stride 0, and the remainder with
// outer_stride 0, run_stride 1.
void check(int64_t d, int64_t r) {
  PairLayout layout;
  layout.runs_per_outer = d;
  layout.outer_stride = 1;
  const int64_t quotient = RunOffsets::of(layout)(r);
  layout.outer_stride = 0;
  layout.run_stride = 1;
  const int64_t remainder = RunOffsets::of(layout)(r);
  ++checked;
  if (quotient != r / d || remainder != r % d) {
    if (++wrong <= 10) {
      std::printf("wrong: %lld / %lld\n", static_cast<long long>(r), static_cast<long long>(d));
    }
  }
}

int main() {
  std::mt19937_64 random(1234);
  const int64_t max = INT64_MAX;
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 3000; ++d) divisors.push_back(d);
  for (int k = 12; k < 63; ++k) {
    const int64_t p = int64_t{1} << k;
    for (int64_t d : {p - 1, p, p + 1, 3 * (p / 2) + 1}) divisors.push_back(d);
  }
  for (int i = 0; i < 2000; ++i) {
    divisors.push_back(1 + static_cast<int64_t>(random() >> (1 + i % 62)));
  }
  divisors.push_back(max);
  for (int64_t d : divisors) {
    for (int64_t r : {int64_t{0}, int64_t{1}, d - 1, d, max - 1, max, max - d, max / d * d - 1}) {
      if (r >= 0) check(d, r);
    }
    if (d <= max / 3) {
      check(d, 2 * d - 1);
      check(d, 3 * d);
    }
    for (int i = 0; i < 40; ++i) check(d, static_cast<int64_t>(random() >> (1 + i % 63)));
  }
  std::printf("checked %d wrong %d\n", checked, wrong);
}
"""


def test_the_check_sees_a_64_bit_division(tmp_path):
    source = tmp_path / "control.cu"
    source.write_text(CONTROL)
    ptx = tmp_path / "control.ptx"
    run = subprocess.run(
        [os.path.join(CUDA_HOME, "bin", "nvcc"), "-arch=sm_90", "-ptx", *nvcc_flags()]
        + [str(source), "-o", str(ptx)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert DIVISION.search(ptx.read_text())


@pytest.mark.parametrize("arch", ARCHS)
def test_no_kernel_divides_64_bit_integers(arch, tmp_path_factory):
    kernels = compile_kernels(arch, tmp_path_factory).kernels
    vector = 0
    for name, kernel in kernels.items():
        found = DIVISION.findall(kernel.ptx)
        assert not found, f"{name}: {len(found)} 64-bit divisions"
        vector += instance(name).vector
    assert vector > 0


def test_run_offsets_divide_exactly(tmp_path):
    out = run_host_probe(PROBE, str(tmp_path))
    m = re.search(r"checked (\d+) wrong (\d+)", out)
    assert m, out
    assert int(m[1]) > 100_000
    assert int(m[2]) == 0, out
