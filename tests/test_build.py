"""The build's decisions (build_config.py) and what the built extension says of itself."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from conftest import skip_outside_ci  # noqa: E402

import build_config  # noqa: E402
import glu_fused  # noqa: E402
from glu_fused.backends import extension  # noqa: E402


def test_cuda_is_built_when_nvcc_and_cuda_torch_and_kernels_are_there():
    ok, why = build_config.cuda_decision("13.0", "/usr/local/cuda", ["k.cu"], environ={})
    assert ok, why


@pytest.mark.parametrize(
    ("torch_cuda", "home", "kernels", "reason"),
    [
        (None, "/usr/local/cuda", ["k.cu"], "CPU-only"),
        ("13.0", None, ["k.cu"], "nvcc"),
        ("13.0", "/usr/local/cuda", [], "no kernels"),
    ],
)
def test_cuda_is_skipped_with_a_reason(torch_cuda, home, kernels, reason):
    ok, why = build_config.cuda_decision(torch_cuda, home, kernels, environ={})
    assert not ok and reason in why
    with pytest.raises(RuntimeError, match=reason):
        build_config.cuda_decision(torch_cuda, home, kernels, environ={"GLU_FUSED_CUDA": "1"})


def test_cuda_switch_off():
    ok, why = build_config.cuda_decision("13.0", "/x", ["k.cu"], environ={"GLU_FUSED_CUDA": "0"})
    assert not ok and "GLU_FUSED_CUDA=0" in why


def test_cpu_levels_are_every_x86_level_or_the_one_asked_for():
    every = ("default", "avx2", "avx512")
    assert build_config.CPU_CAPABILITIES == extension.CPU_LEVELS == every  # one fact, two homes
    assert build_config.cpu_levels(environ={}, machine="x86_64") == every
    assert build_config.cpu_levels(environ={}, machine="AMD64") == every
    assert build_config.cpu_levels(environ={}, machine="aarch64") == ("default",)
    asked = {"GLU_FUSED_CPU_CAPABILITY": "avx512"}
    assert build_config.cpu_levels(environ=asked, machine="x86_64") == ("avx512",)
    with pytest.raises(ValueError, match="GLU_FUSED_CPU_CAPABILITY"):
        build_config.cpu_levels(environ={"GLU_FUSED_CPU_CAPABILITY": "sse9"})


def test_only_the_cpu_levels_get_isa_flags():
    """The ISA flags go to the levels' objects alone: the rest of the extension (and the
    choice of level) must run on any CPU of the architecture."""
    plan = build_config.plan(None, environ={"GLU_FUSED_CUDA": "0"})
    assert not any(flag.startswith(("-mavx", "-DCPU_CAPABILITY")) for flag in plan.cxx_flags)
    assert build_config.CPU_KERNELS not in plan.sources
    assert "-DCPU_CAPABILITY=AVX512" in build_config.cpu_level_flags("avx512")
    assert "-mavx512f" in build_config.cpu_level_flags("avx512")
    assert build_config.cpu_level_flags("default") == ["-DCPU_CAPABILITY=DEFAULT"]


def test_cuda_home_skips_the_nvcc_wrapper(tmp_path):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("")
    assert build_config.find_cuda_home({"CUDA_HOME": str(home)}) == str(home)


def test_extension_is_built_and_loaded():
    spec = importlib.util.find_spec("glu_fused._C")
    assert spec is not None, "glu_fused._C was not built"
    assert extension.built_cpu_levels() == build_config.cpu_levels()


def test_extension_cpu_kernels_run_torchs_simd_level():
    """The level in use is torch's, where it was built (every level is, unless one was asked
    for), and backend_status says which."""
    here = torch.backends.cpu.get_cpu_capability().lower()
    built = extension.built_cpu_levels()
    if here in built:
        assert extension.cpu_capability() == here
    elif os.environ.get("GLU_FUSED_CPU_CAPABILITY"):
        pytest.skip(f"one level built ({built}), and torch runs {here}")
    assert glu_fused.backend_status()["cpu"] == f"available ({here} kernels)"


def _cuda_buildable() -> tuple[bool, str]:
    return build_config.cuda_decision(
        torch.version.cuda, build_config.find_cuda_home(), build_config.cuda_sources(), environ={}
    )


def test_cuda_kernels_are_built_wherever_they_can_be():
    """With kernels in csrc/cuda, nvcc and a CUDA torch, a build without them is broken, unless
    switched off ($GLU_FUSED_CUDA=0, as make test-oldest builds: the next test)."""
    can, why = _cuda_buildable()
    from glu_fused import _C

    if not can:
        assert not _C.WITH_CUDA
        skip_outside_ci(f"the CUDA kernels cannot be built here: {why}")
    if os.environ.get("GLU_FUSED_CUDA") == "0" and not _C.WITH_CUDA:
        pytest.skip("built with GLU_FUSED_CUDA=0: the CUDA kernels switched off")
    assert _C.WITH_CUDA, "nvcc and a CUDA torch are present but the CUDA kernels were not built"


def test_the_cuda_launch_code_compiles_against_this_torch():
    """Where the CUDA kernels could be built but were switched off (make test-oldest: their
    sources include no torch header, so make test's build covers them for any torch), the code
    that launches them still compiles against this torch's headers: glu_ops.cpp with
    GLU_FUSED_WITH_CUDA (c10/cuda's stream and guard), g++ -fsyntax-only."""
    from torch.utils import cpp_extension

    from glu_fused import _C

    can, why = _cuda_buildable()
    if not can:
        skip_outside_ci(f"the CUDA kernels cannot be built here: {why}")
    if _C.WITH_CUDA:
        pytest.skip("the extension's build compiled it with its CUDA kernels")
    plan = build_config.plan(torch.version.cuda, environ={**os.environ, "GLU_FUSED_CUDA": "1"})
    includes = [
        build_config.CSRC,
        *cpp_extension.include_paths(),
        os.path.join(build_config.find_cuda_home(), "include"),
        sysconfig.get_paths()["include"],
    ]
    command = [
        shutil.which("c++") or "g++",
        "-fsyntax-only",
        "-std=c++17",
        *plan.cxx_flags,
        *(f"-I{path}" for path in includes),
        os.path.join(build_config.CSRC, "glu_ops.cpp"),
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(command)}\n{run.stderr[-4000:]}"


def test_default_cuda_archs_add_the_newer_ones_nvcc_has():
    base = "8.0;8.6;8.9;9.0"
    assert build_config.default_cuda_archs(set()) == base + "+PTX"
    newer = {"7.5", "8.0", "9.0", "10.0", "12.0", "12.1"}
    assert build_config.default_cuda_archs(newer) == base + ";10.0;12.0+PTX"


def test_nvcc_archs_are_read_from_nvcc():
    assert build_config.nvcc_archs(None) == set()
    home = build_config.find_cuda_home()
    if home is None:
        pytest.skip("no nvcc on this machine")
    assert {"8.0", "9.0"} <= build_config.nvcc_archs(home)


def test_nvcc_is_found_where_installed():
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no nvcc on this machine")
    assert build_config.find_cuda_home() is not None
