"""Builds glu_fused._C: the CPU kernels always, the CUDA kernels when nvcc and a CUDA torch
are present. The decisions live in build_config.py."""

import os
import sys
import threading

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

plan = build_config.plan(torch.version.cuda, torch_version=torch.__version__)
print(
    f"glu_fused: CPU kernels for {', '.join(plan.cpu_levels)}; CUDA kernels: "
    f"{'yes' if plan.with_cuda else 'no'} ({plan.reason})",
    file=sys.stderr,
)


class BuildWithCpuLevels(BuildExtension):
    """torch's build, and the CPU kernels compiled once per level (build_config.cpu_levels),
    each with its own flags, beside the other sources' compile; their objects are linked
    after the others, lowest level first (build_config's docstring says why)."""

    def build_extension(self, ext):
        source = os.path.relpath(build_config.CPU_KERNELS)
        compiles = []
        for level in plan.cpu_levels:
            out = os.path.abspath(os.path.join(self.build_temp, f"cpu_{level}"))
            flags = [*ext.extra_compile_args["cxx"], *build_config.cpu_level_flags(level)]
            compiles.append((out, {"cxx": flags}))
            ext.extra_objects.extend(self.compiler.object_filenames([source], output_dir=out))
        errors = []

        def compile_level(out, flags):
            try:
                self.compiler.compile([source], output_dir=out, include_dirs=ext.include_dirs,
                                      extra_postargs=flags)  # fmt: skip
            except Exception as error:  # re-raised before the link
                errors.append(error)

        threads = [threading.Thread(target=compile_level, args=c) for c in compiles]
        for thread in threads:
            thread.start()
        link = self.compiler.link_shared_object

        def link_after_the_levels(*args, **kwargs):
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            return link(*args, **kwargs)

        self.compiler.link_shared_object = link_after_the_levels
        try:
            super().build_extension(ext)
        finally:
            self.compiler.link_shared_object = link
            for thread in threads:
                thread.join()


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
            depends=build_config.dependencies(),
        )
    ],
    cmdclass={"build_ext": BuildWithCpuLevels.with_options(use_ninja=True)},
)
