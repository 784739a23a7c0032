"""Builds glu_fused._C: the CPU kernels always, the CUDA kernels when nvcc and a CUDA torch
are present. The decisions live in build_config.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_config  # noqa: E402

# torch reads CUDA_HOME when cpp_extension is imported: point it at the real toolkit first.
_cuda_home = build_config.find_cuda_home()
if _cuda_home and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = _cuda_home
if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.default_cuda_archs(
        build_config.nvcc_archs(_cuda_home)
    )

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

plan = build_config.plan(
    torch.version.cuda, torch.backends.cpu.get_cpu_capability(), torch_version=torch.__version__
)
print(
    f"glu_fused: CPU kernels for {plan.cpu_capability}; CUDA kernels: "
    f"{'yes' if plan.with_cuda else 'no'} ({plan.reason})",
    file=sys.stderr,
)

Extension = CUDAExtension if plan.with_cuda else CppExtension
compile_args = {"cxx": plan.cxx_flags}
if plan.with_cuda:
    compile_args["nvcc"] = plan.nvcc_flags

setup(
    ext_modules=[
        Extension(
            name="glu_fused._C",
            sources=[os.path.relpath(s) for s in plan.sources],
            include_dirs=[build_config.CSRC],
            extra_compile_args=compile_args,
            extra_link_args=plan.link_flags,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
