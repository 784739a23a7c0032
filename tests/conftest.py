"""Shared test helpers: the spec's tolerances, input makers, the backends under test."""

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

import glu_fused  # noqa: E402
from glu_fused import reference  # noqa: E402

# SPEC "Numerics": (rtol, atol) against the reference evaluated in float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (8e-3, 1e-5),
}
DTYPES = list(TOLERANCES)
LAYOUTS = ("halves", "interleaved")

# Each packed function as (public name, keyword arguments); geglu twice, erf and tanh.
FUNCTIONS = [
    ("glu", {}),
    ("swiglu", {}),
    ("geglu", {}),
    ("geglu", {"approximate": "tanh"}),
    ("reglu", {}),
    ("clamped_swiglu", {}),
    ("clamped_swiglu", {"alpha": 1.0, "limit": 2.5}),
]
FUNCTION_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in FUNCTIONS]
ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu")


def _runs_here(name: str) -> tuple[bool, str]:
    status = glu_fused.backend_status()[name]
    if status != "available":
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


def ops_of(backend: str):
    """(packed, gated) op families of a backend whose kernels are torch.library ops."""
    b = glu_fused.backends.BACKENDS[backend]
    return b.packed_family, b.gated_family


def fused(name: str):
    return getattr(glu_fused, name)


def ref(name: str):
    return getattr(reference, name)


def random_input(shape, dtype, device="cpu", scale=3.0) -> torch.Tensor:
    """Fresh random values, never zeros: normal with a spread that exercises the gates."""
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)


def assert_matches(out: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, what=""):
    """SPEC's per-element bound |out - ref| <= atol + rtol |ref|, NaN and inf where ref has them.

    `expected64` is the reference evaluated in float64 on the same inputs. Where it lies
    beyond `dtype`'s range, the result must be the infinity it rounds to.
    """
    assert out.dtype == dtype, f"{what}: dtype {out.dtype}, expected {dtype}"
    assert out.shape == expected64.shape, f"{what}: shape {out.shape} vs {expected64.shape}"
    rtol, atol = TOLERANCES[dtype]
    got = out.detach().double().cpu()
    want = expected64.detach().double().cpu()
    rounded = want.to(dtype).double()
    nan_want = want.isnan()
    assert torch.equal(got.isnan(), nan_want), f"{what}: NaN where the reference has none, or not"
    inf_want = rounded.isinf()
    assert torch.equal(got[inf_want], rounded[inf_want]), f"{what}: infinities differ"
    finite = ~nan_want & ~inf_want
    assert got[finite].isfinite().all(), f"{what}: non-finite where the reference is finite"
    err = (got[finite] - want[finite]).abs()
    bound = atol + rtol * want[finite].abs()
    if err.numel():
        worst = (err - bound).argmax()
        assert bool((err <= bound).all()), (
            f"{what}: {int((err > bound).sum())} elements out of tolerance; worst |err| "
            f"{err[worst].item():.3e} > {bound[worst].item():.3e} at ref {want[finite][worst]}"
        )
