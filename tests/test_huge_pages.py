"""Large CPU results are asked to be transparent huge pages (csrc/glu_plan.cpp,
advise_huge_pages): the whole 2 MiB pages inside every result of 4 MiB or more that the CPU
kernels write (forward, the backward's input gradient, the gated backward's two gradients,
FP8's q) carry the kernel's VM_HUGEPAGE flag, "hg" in /proc/self/smaps, and none do under
GLU_FUSED_HUGE_PAGES=0. Linux with THP only (elsewhere the flag does not exist, and the tests
skip with that reason); the values themselves are the numeric suites' job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_input

import glu_fused

HUGE_PAGE = 2 << 20
THP = "/sys/kernel/mm/transparent_hugepage/enabled"

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/proc/self/smaps") and os.path.exists(THP)),
    reason="transparent huge pages are Linux's, and this kernel has none",
)


def _vm_flags(address: int) -> set[str]:
    """The flags of the mapping that holds address, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def _whole_pages_are_advised(t: torch.Tensor) -> bool:
    begin = t.data_ptr()
    first = -(-begin // HUGE_PAGE) * HUGE_PAGE
    last = (begin + t.numel() * t.element_size()) // HUGE_PAGE * HUGE_PAGE - 1
    assert last > first, "the test's tensor holds no whole huge page"
    return all("hg" in _vm_flags(address) for address in (first, last))


def _large_results() -> dict[str, torch.Tensor]:
    """A result of each kind the CPU kernels allocate, 4 MiB or more each."""
    with glu_fused.use_backend("cpu"):
        x = random_input((1024, 2 * 1024), torch.float32).requires_grad_()
        out = glu_fused.swiglu(x)
        (dx,) = torch.autograd.grad(out, x, random_input(out.shape, out.dtype))
        gate = random_input((1024, 1024), torch.float32).requires_grad_()
        value = random_input((1024, 1024), torch.float32).requires_grad_()
        h = glu_fused.gated(gate, value, "silu")
        d_gate, d_value = torch.autograd.grad(h, (gate, value), random_input(h.shape, h.dtype))
        q, _ = glu_fused.swiglu(
            random_input((1024, 2 * 4096), torch.bfloat16), out_dtype=torch.float8_e4m3fn
        )
    return {"forward": out, "backward": dx, "gated d gate": d_gate, "gated d value": d_value,
            "fp8 q": q}  # fmt: skip


@pytest.mark.skipif(
    os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
    reason="THP_MEM_ALLOC_ENABLE=1: torch advises every allocation, so ours cannot be told apart",
)
def test_the_cpu_kernels_large_results_are_in_huge_pages():
    advised = {name: _whole_pages_are_advised(t) for name, t in _large_results().items()}
    missing = [name for name, yes in advised.items() if not yes]
    assert not missing, f"results not advised to be huge pages: {missing}"


def test_glu_fused_huge_pages_0_leaves_the_memory_alone():
    # A fresh process: the switch is read once, and no earlier advice may cover its memory.
    script = (
        "from test_huge_pages import _large_results, _whole_pages_are_advised\n"
        "advised = [n for n, t in _large_results().items() if _whole_pages_are_advised(t)]\n"
        "assert not advised, f'advised despite GLU_FUSED_HUGE_PAGES=0: {advised}'\n"
    )
    env = dict(os.environ, GLU_FUSED_HUGE_PAGES="0")
    env.pop("THP_MEM_ALLOC_ENABLE", None)  # torch's own advice, for every allocation
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
