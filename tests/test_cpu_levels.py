"""The CPU kernels' SIMD levels (build_config.cpu_levels; csrc/cpu/glu_cpu_levels.cpp chooses
one at load from torch's at::get_cpu_capability()).

Each level this host runs computes the same cases in a process of its own, forced by
ATEN_CPU_CAPABILITY: every packed function (halves and interleaved) and gated activation in
float16, bfloat16, float32 and float64, forward and backward, over random inputs with
extremes planted (large and tiny values, zeros, infinities, NaN), and FP8 output in every
granularity. The results are compared bit for bit across levels: AVX2 and AVX-512 hold the
same bits; the default level (scalar code, and std::exp where the vector levels take ATen's
exp_u20 polynomial) may differ in the last bits of float32 activations, within the contract's
tolerance, which the test checks and reports. A level the host cannot run is skipped with
that reason. `make test-cpu-levels` also runs the numeric, extremes, determinism, lean-MLP
and FP8 suites at every level the host runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from glu_fused.backends import extension
from glu_fused.testing import assert_matches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = extension.CPU_LEVELS

# Writes {case: result} of every case to argv[2], computed at the level the process runs.
SCRIPT = r"""
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import ACTIVATIONS, FUNCTION_IDS, FUNCTIONS, fused  # noqa: E402

import glu_fused  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP8 = {"token": {}, "group": {"granularity": "group"}, "mx": {"granularity": "mx"},
       "tensor": {"granularity": "tensor"}}


def inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    flat = x.view(-1)
    flat[::97] = 0.0
    flat[1::89] *= 1e4
    flat[2::83] *= 1e-6
    flat[3::1009] = float("inf")
    flat[4::1013] = float("-inf")
    flat[5::1019] = float("nan")
    return x.to(dtype)


out = {"level": glu_fused.backend_status()["cpu"]}
with glu_fused.use_backend("cpu"):
    for dtype in DTYPES:
        for (name, kwargs), fid in zip(FUNCTIONS, FUNCTION_IDS):
            for layout in ("halves", "interleaved"):
                x = inputs((9, 2 * 300), dtype, 1).requires_grad_()
                y = fused(name)(x, layout=layout, **kwargs)
                grad = inputs(y.shape, dtype, 2)
                (dx,) = torch.autograd.grad(y, x, grad)
                out[f"{fid} {layout} {dtype} forward"] = y.detach()
                out[f"{fid} {layout} {dtype} backward"] = dx
            with torch.no_grad():
                x = inputs((9, 2 * 256), dtype, 3)
                for mode, options in FP8.items():
                    q, s = fused(name)(x, out_dtype=torch.float8_e4m3fn, **kwargs, **options)
                    out[f"{fid} {dtype} fp8 {mode} q"] = q
                    out[f"{fid} {dtype} fp8 {mode} scale"] = s
        for activation in ACTIVATIONS:
            g = inputs((7, 301), dtype, 4).requires_grad_()
            v = inputs((7, 301), dtype, 5).requires_grad_()
            y = glu_fused.gated(g, v, activation)
            dg, dv = torch.autograd.grad(y, (g, v), inputs(y.shape, dtype, 6))
            out[f"gated {activation} {dtype} forward"] = y.detach()
            out[f"gated {activation} {dtype} backward gate"] = dg
            out[f"gated {activation} {dtype} backward value"] = dv
torch.save(out, sys.argv[2])
"""


def level_params():
    params = []
    for level in LEVELS:
        why = None
        if level not in extension.torch_cpu_levels():
            why = f"this CPU runs torch at {torch.backends.cpu.get_cpu_capability()}"
        elif level not in extension.built_cpu_levels():
            why = f"the CPU kernels were built for {extension.built_cpu_levels()} alone"
        marks = [pytest.mark.skip(reason=f"level {level}: {why}")] if why else []
        params.append(pytest.param(level, marks=marks, id=level))
    return params


_RESULTS: dict[str, dict] = {}


def results_at(level: str, tmp_path_factory) -> dict:
    """Every case's result computed at `level` (once per session)."""
    if level not in _RESULTS:
        path = tmp_path_factory.mktemp(f"level_{level}") / "results.pt"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": level, "GLU_FUSED_EMULATE_CUDA": "0"}
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, os.path.join(ROOT, "tests"), str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        _RESULTS[level] = torch.load(path)
    return _RESULTS[level]


def differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bits differ (a NaN of either sign matches a NaN)."""
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    nan = torch.isnan(a.float()) & torch.isnan(b.float())
    return int(((a.view(bits) != b.view(bits)) & ~nan).sum())


@pytest.mark.parametrize("level", level_params())
def test_each_level_runs_at_its_level_and_matches_the_highest_bit_for_bit(level, tmp_path_factory):
    """Every level against the highest this host runs: the vector levels bit for bit; the
    default level within the contract's tolerance, its differing elements counted."""
    top = extension.runnable_cpu_levels()[-1]
    mine, best = results_at(level, tmp_path_factory), results_at(top, tmp_path_factory)
    assert mine.pop("level") == f"available ({level} kernels)"
    best = {k: v for k, v in best.items() if k != "level"}
    assert mine.keys() == best.keys()
    report = []
    for key, got in mine.items():
        n = differing(got, best[key])
        if n == 0:
            continue
        report.append(f"{key}: {n} of {got.numel()}")
        if level != "default" or got.dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                   torch.float64):  # fmt: skip
            continue
        assert_matches(got, best[key].double(), got.dtype, f"{key} at {level}")
    print(f"\n{level} against {top}: {len(report)} of {len(mine)} results differ in some bits")
    print("\n".join(report[:40]))
    if level != "default":
        assert not report, f"{level} differs from {top}:\n" + "\n".join(report)
