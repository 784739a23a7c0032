"""Shared test helpers: the promised tolerances, the functions under test (from the one
table, glu_fused._table), input makers, the backends under test."""

from __future__ import annotations

import os

# Set before the extension loads: every fused result starts as NaN, so an element a kernel
# fails to write cannot pass.
os.environ.setdefault("GLU_FUSED_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, the Triton backend runs CPU tensors through Triton's interpreter, which
# must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from covering import design, product  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused import _table, reference  # noqa: E402
from glu_fused.testing import TOLERANCES, assert_matches  # noqa: E402, F401

DTYPES = list(TOLERANCES)
LAYOUTS = _table.LAYOUTS

# Each packed function as (public name, keyword arguments), from the table (geglu twice, erf
# and tanh), and clamped_swiglu once more with parameters of its own.
FUNCTIONS = [(f.public, dict(f.options)) for f in _table.PACKED_FUNCTIONS.values()] + [
    ("clamped_swiglu", {"alpha": 1.0, "limit": 2.5})
]
FUNCTION_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in FUNCTIONS]
OP_FUNCTIONS = tuple(_table.PACKED_FUNCTIONS)  # the ops' `function` names
ACTIVATIONS = tuple(_table.GATE_ACTIVATIONS)


# CI (CI=true) has nvcc, a CUDA torch and Triton: there, what needs them must run, not skip.
IN_CI = os.environ.get("CI") == "true"


def skip_outside_ci(reason: str) -> None:
    """Skips with `reason`; in CI, where the tools are required, fails instead."""
    if IN_CI:
        pytest.fail(f"CI requires this check to run: {reason}")
    pytest.skip(reason)


def _runs_here(name: str) -> tuple[bool, str]:
    status = glu_fused.backend_status()[name]
    if not status.startswith("available"):
        return False, status
    return True, ""


def backend_params(names=("cpu", "cuda", "triton", "reference")):
    """pytest params for backends, skipped with the backend's own reason where unavailable."""
    params = []
    for name in names:
        ok, why = _runs_here(name)
        marks = [] if ok else [pytest.mark.skip(reason=f"backend {name!r}: {why}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_of(backend: str) -> str:
    """The device of a backend's test tensors: the Triton backend's are on the CPU where it
    runs in the interpreter."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def interpreted(backend: str) -> bool:
    """Whether a backend's kernels run in Triton's interpreter (a tenth of a second a launch,
    so that the suites give it a covering design rather than the full product)."""
    return backend == "triton" and device_of(backend) == "cpu"


def combinations(backend: str, params: dict, full=()) -> list[dict]:
    """The rows a test loops over for `backend`: the full product of `params` where its kernels
    run natively, a covering design (every pair, `full`'s groups in full) in Triton's
    interpreter."""
    return design(params, full) if interpreted(backend) else product(params)


def ops_of(backend: str):
    """(packed, gated) op families of a backend whose kernels are ops."""
    from glu_fused import _ops

    family = glu_fused.backends.BACKENDS[backend].family
    return _ops.PACKED[family], _ops.GATED[family]


def fused(name: str):
    return getattr(glu_fused, name)


def ref(name: str):
    return getattr(reference, name)


def check_bias_grad(got, want, input_grad, dtype, what):
    """A bias gradient, a float32 sum over the rows of the input gradient, against the
    reference's: within the dtype's bound of it plus float32's relative error of the sum of
    the terms' magnitudes (the bound of a float32 sum, whatever the cancellation)."""
    assert got.dtype == dtype and got.shape == want.shape, what
    rtol, atol = TOLERANCES[dtype]
    magnitude = input_grad.detach().abs().reshape(-1, got.shape[0]).sum(0)
    bound = atol + rtol * want.abs() + TOLERANCES[torch.float32][0] * magnitude
    err = (got.double() - want.double()).abs()
    assert bool((err <= bound).all()), f"{what}: worst {(err - bound).max().item():.3e} over"


def random_input(shape, dtype, device="cpu", scale=3.0) -> torch.Tensor:
    """Fresh random values, never zeros: normal with a spread that exercises the gates."""
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)


# pytest-xdist hands out whole modules (make test's --dist loadscope) in collection order.
# The modules that compile come first, longest first: collected last, as alphabetically they
# would be, the longest would run alone at the end while the other workers sat idle. Those
# that read test_cuda_codegen's sm_90 build come last, when it is long done, rather than wait
# for it on another worker.
COMPILING_MODULES = ("test_triton_codegen", "test_cuda_codegen")
READING_THE_NVCC_BUILD = ("test_cuda_sass", "test_cuda_occupancy", "test_cuda_division")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        module = getattr(getattr(item, "module", None), "__name__", "")
        if module in COMPILING_MODULES:
            return COMPILING_MODULES.index(module)
        return 3 if module in READING_THE_NVCC_BUILD else 2

    items.sort(key=rank)
