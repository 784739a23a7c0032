"""Backend selection: what is available, "auto", use_backend and $GLU_FUSED_BACKEND."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import glu_fused
from glu_fused import backends


def test_available_backends_lists_what_runs():
    available = glu_fused.available_backends()
    assert "reference" in available
    status = glu_fused.backend_status()
    assert set(status) == {"cuda", "triton", "cpu", "reference"}
    for name, reason in status.items():
        assert (name in available) == reason.startswith("available"), (name, reason)


def test_cpu_backend_is_built_here():
    """The CPU kernels are always built: `make test` must not pass on the reference alone."""
    assert glu_fused.backend_status()["cpu"].startswith("available")


def test_auto_prefers_compiled_kernels_on_cpu():
    chosen = backends.select(torch.device("cpu")).name
    assert chosen == ("cpu" if "cpu" in glu_fused.available_backends() else "reference")


def test_use_backend_forces_and_restores():
    x = torch.randn(4, 8)
    before = glu_fused.current_backend()
    with glu_fused.use_backend("reference"):
        assert glu_fused.current_backend() == "reference"
        assert backends.select(x.device).name == "reference"
        with glu_fused.use_backend("auto"):
            assert glu_fused.current_backend() == "auto"
        assert glu_fused.current_backend() == "reference"
    assert glu_fused.current_backend() == before


def test_use_backend_restores_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with glu_fused.use_backend("reference"):
            1 / 0  # noqa: B018
    assert glu_fused.current_backend() == "auto"


def test_reference_backend_runs_the_reference():
    x = torch.randn(4, 8)
    with glu_fused.use_backend("reference"):
        assert torch.equal(glu_fused.swiglu(x), glu_fused.reference.swiglu(x))


def test_meta_tensors_give_shapes():
    out = glu_fused.swiglu(torch.empty(3, 10, device="meta"), 1)
    assert out.shape == (3, 5) and out.device.type == "meta"


def test_cuda_tensors_without_gpu_are_refused_by_cpu_backend():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with glu_fused.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run"):
        glu_fused.swiglu(torch.randn(2, 4))


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_environment_variable_sets_the_default():
    done = _run(
        "import glu_fused; print(glu_fused.current_backend())", GLU_FUSED_BACKEND="reference"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reference"


def test_environment_variable_is_checked():
    done = _run("import glu_fused", GLU_FUSED_BACKEND="fastest")
    assert done.returncode != 0
    assert "unknown backend 'fastest'" in done.stderr and "GLU_FUSED_BACKEND" in done.stderr


def test_cpu_kernels_follow_torchs_simd_level_down():
    """ATEN_CPU_CAPABILITY moves the CPU kernels' level with torch's: every level built runs
    where torch runs it; a single level built above it is refused, with the fix."""
    from glu_fused.backends import extension

    levels = extension.CPU_LEVELS
    for level in extension.torch_cpu_levels():
        done = _run(
            "import glu_fused; print(glu_fused.backend_status()['cpu'])",
            ATEN_CPU_CAPABILITY=level,
        )
        assert done.returncode == 0, done.stderr
        if level in extension.built_cpu_levels():
            assert done.stdout.strip() == f"available ({level} kernels)", (level, done.stdout)
        elif min(map(levels.index, extension.built_cpu_levels())) > levels.index(level):
            assert "rebuild without GLU_FUSED_CPU_CAPABILITY" in done.stdout, done.stdout


def test_import_without_the_extension_falls_back_to_the_reference():
    """With glu_fused._C present but not loading (as when built for another torch),
    everything runs on the reference, and the import says so once, with the fix."""
    done = _run(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'glu_fused._C':\n"
        "            raise ImportError('simulated: extension not built')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, glu_fused\n"
        "print(glu_fused.available_backends())\n"
        "print(glu_fused.backend_status()['cpu'])\n"
        "x = torch.randn(3, 8, requires_grad=True)\n"
        "glu_fused.swiglu(x).sum().backward()\n"
        "assert torch.allclose(glu_fused.swiglu(x), glu_fused.reference.swiglu(x))\n"
        "print('ok')\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    # The Triton family's ops are the extension's too: without it, only the reference runs.
    assert lines[0] == "['reference']", lines[0]
    assert "does not load (simulated: extension not built)" in lines[1], lines[1]
    assert lines[2] == "ok"
    warning = [line for line in done.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warning) == 1, done.stderr
    assert "does not load" in warning[0] and "pip install --no-build-isolation" in warning[0]


def test_triton_without_a_gpu_or_its_interpreter_says_why():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Triton runs")
    done = _run(
        "import glu_fused; print(glu_fused.backend_status()['triton'])", TRITON_INTERPRET="0"
    )
    assert done.returncode == 0, done.stderr
    assert "no GPU for Triton" in done.stdout or "not installed" in done.stdout, done.stdout
