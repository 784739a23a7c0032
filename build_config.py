"""How setup.py builds the extension: which kernels, for which CPU and GPU, with what flags.

Kept apart from setup.py so that tests can check the decisions without building.

* CPU kernels: always. csrc/cpu/glu_cpu.cpp is compiled once per SIMD level of ATen's
  Vectorized, as ATen compiles its own kernels: on x86-64 default, avx2 and avx512, each in
  its own namespace (CPU_CAPABILITY), and the extension picks one at load from torch's
  at::get_cpu_capability() (csrc/cpu/glu_cpu_levels.cpp), so ATEN_CPU_CAPABILITY moves it
  with torch's. Other architectures build the default level. $GLU_FUSED_CPU_CAPABILITY
  (default, avx2, avx512) builds that one level alone. Only the levels' objects get the
  ISA's flags: the rest of the extension is baseline code, linked first, so that an inline
  function compiled into several levels (one definition kept) is the baseline's.
* CUDA kernels: when csrc/cuda has kernels, nvcc is found and torch is a CUDA build
  (torch.version.cuda). Never decided from torch.cuda.is_available(): a machine without a
  GPU still compiles and links them. $GLU_FUSED_CUDA=0 turns them off, =1 makes their
  absence an error. Architectures come from $TORCH_CUDA_ARCH_LIST, as torch reads it;
  unset, default_cuda_archs() chooses them.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")

CPU_CAPABILITIES = ("default", "avx2", "avx512")
_CPU_FLAGS = {
    "default": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
    "avx512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-mf16c",
        "-DCPU_CAPABILITY_AVX512",
    ],
}
# Architectures built when $TORCH_CUDA_ARCH_LIST is unset: Ampere, Ada and Hopper always;
# Blackwell (data centre, then consumer) where this nvcc has it; PTX of the newest built, so
# that later GPUs can compile it at load.
BASE_CUDA_ARCHS = ("8.0", "8.6", "8.9", "9.0")
NEWER_CUDA_ARCHS = ("10.0", "12.0")


def find_cuda_home(environ=os.environ) -> str | None:
    """The CUDA toolkit: $CUDA_HOME, else /usr/local/cuda, else the one around nvcc.

    /usr/local/bin/nvcc may be a wrapper, from which torch would guess /usr/local.
    """
    for candidate in (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(home, "include")):
            return home
    return None


def cpu_levels(environ=os.environ, machine: str | None = None) -> tuple[str, ...]:
    """The SIMD levels to compile the CPU kernels for, lowest first."""
    asked = environ.get("GLU_FUSED_CPU_CAPABILITY", "").strip().lower()
    if asked:
        if asked not in CPU_CAPABILITIES:
            raise ValueError(
                f"GLU_FUSED_CPU_CAPABILITY={asked!r}: expected one of {CPU_CAPABILITIES}"
            )
        return (asked,)
    machine = (machine or platform.machine()).lower()
    return CPU_CAPABILITIES if machine in ("x86_64", "amd64") else ("default",)


def cpu_level_flags(level: str) -> list[str]:
    """The compile flags of one level's CPU kernels: its ISA, and ATen's namespace for it."""
    return [*_CPU_FLAGS[level], f"-DCPU_CAPABILITY={level.upper()}"]


def nvcc_archs(cuda_home: str | None) -> set[str]:
    """The compute capabilities this nvcc compiles for, as "9.0"; empty without nvcc."""
    if cuda_home is None:
        return set()
    try:
        listed = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return set()
    archs = set()
    for name in listed:  # compute_90
        digits = name.removeprefix("compute_")
        if digits.isdigit():
            archs.add(f"{digits[:-1]}.{digits[-1]}")
    return archs


def default_cuda_archs(available: set[str]) -> str:
    """$TORCH_CUDA_ARCH_LIST's default: the base architectures, the newer ones nvcc has."""
    archs = [*BASE_CUDA_ARCHS, *(a for a in NEWER_CUDA_ARCHS if a in available)]
    return ";".join(archs) + "+PTX"


@dataclass
class BuildPlan:
    with_cuda: bool
    reason: str
    cpu_levels: tuple[str, ...]
    sources: list[str] = field(default_factory=list)
    cxx_flags: list[str] = field(default_factory=list)
    nvcc_flags: list[str] = field(default_factory=list)
    link_flags: list[str] = field(default_factory=lambda: ["-fopenmp"])


def dependencies() -> list[str]:
    """What the extension is built from besides its sources: the headers, the CPU kernels."""
    found = glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True)
    found += glob.glob(os.path.join(CSRC, "**", "*.cuh"), recursive=True)
    return sorted([*found, CPU_KERNELS])


def cuda_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))


def cuda_decision(
    torch_cuda_version: str | None, cuda_home: str | None, kernels: list[str], environ=os.environ
) -> tuple[bool, str]:
    """(build the CUDA kernels?, why)."""
    switch = environ.get("GLU_FUSED_CUDA", "").strip()
    if switch == "0":
        return False, "GLU_FUSED_CUDA=0"
    missing = None
    if not kernels:
        missing = "csrc/cuda has no kernels"
    elif torch_cuda_version is None:
        missing = "torch is a CPU-only build"
    elif cuda_home is None:
        missing = "nvcc was not found"
    if missing is None:
        return True, f"nvcc in {cuda_home}, torch for CUDA {torch_cuda_version}"
    if switch == "1":
        raise RuntimeError(f"GLU_FUSED_CUDA=1 but the CUDA kernels cannot be built: {missing}")
    return False, missing


# The extension's C++ sources besides the CUDA kernels and the CPU kernels: the ops and their
# plans, autograd, the Python module, the choice of the CPU kernels' level.
CXX_SOURCES = (
    "glu_ops.cpp",
    "glu_plan.cpp",
    "glu_autograd.cpp",
    "glu_python.cpp",
    "cpu/glu_cpu_levels.cpp",
)
# The CPU kernels, compiled once per level (setup.py), each with cpu_level_flags(level).
CPU_KERNELS = os.path.join(CSRC, "cpu", "glu_cpu.cpp")


def plan(
    torch_cuda_version: str | None, environ=os.environ, torch_version: str = "unknown"
) -> BuildPlan:
    cuda_home = find_cuda_home(environ)
    kernels = cuda_sources()
    with_cuda, reason = cuda_decision(torch_cuda_version, cuda_home, kernels, environ)
    levels = cpu_levels(environ)
    sources = [os.path.join(CSRC, source) for source in CXX_SOURCES]
    defines = [
        f'-DGLU_FUSED_TORCH_VERSION="{torch_version}"',
        *(f"-DGLU_FUSED_CPU_LEVEL_{level.upper()}" for level in levels),
    ]
    # -fopenmp: at::parallel_for is inline, and runs serially where OpenMP is off.
    cxx = ["-O3", "-fno-math-errno", "-fopenmp", *defines]
    nvcc = []
    if with_cuda:
        sources += kernels
        cxx.append("-DGLU_FUSED_WITH_CUDA")
        nvcc = ["-O3", "-DGLU_FUSED_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
    return BuildPlan(with_cuda, reason, levels, sources, cxx, nvcc)
