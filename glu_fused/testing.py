"""The accuracy glu_fused promises, as tests and benchmarks check it.

Every result and gradient is held, element by element, to the reference evaluated in
float64 on the same inputs: ``|out - ref| <= atol + rtol * |ref|``, NaN exactly where the
reference has NaN, and the infinity that the reference rounds to where it lies beyond the
dtype's range.
"""

from __future__ import annotations

import torch

# (rtol, atol) per dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (8e-3, 1e-5),
}


def assert_matches(
    out: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, what: str = ""
) -> None:
    """Raises AssertionError unless `out` (of `dtype`) meets the bound against `expected64`,
    the reference evaluated in float64 on the same inputs."""
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
