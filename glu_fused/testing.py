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


def assert_rounded_once(out: torch.Tensor, expected64: torch.Tensor, what: str = "") -> None:
    """Raises AssertionError unless `out` (float16 or bfloat16) is `expected64`, the float64
    reference, rounded to `out`'s dtype, bit for bit, wherever float32 arithmetic settles that
    rounding.

    The arithmetic runs in float32 and is rounded once. Its float32 result lies within the
    float32 bound (TOLERANCES[torch.float32]) of the reference, so it rounds as the reference
    does unless the reference lies within that bound of a rounding tie (the midpoint between
    two neighbours of the dtype); those elements are left out, and so are non-finite ones.
    Exact zeros are kept. A kernel that truncates instead of rounding differs on about half of
    the rest; one within a unit in the last place (the 16-bit tolerances) passes
    `assert_matches`, not this.

    (The bound is the float32 promise, not a few float32 ulps: next to a stationary point of
    the activation's slope, SiLU's at -1.28 say, float32 arithmetic is off by hundreds of
    ulps of its tiny result, within the bound.)
    """
    dtype = out.dtype
    assert dtype in (torch.float16, torch.bfloat16), f"{what}: {dtype} is not a 16-bit float"
    assert out.shape == expected64.shape, f"{what}: shape {out.shape} vs {expected64.shape}"
    want = expected64.detach().double().cpu()
    got = out.detach().cpu()
    rounded = want.to(dtype)
    up = torch.nextafter(rounded, torch.tensor(float("inf"), dtype=dtype)).double()
    down = torch.nextafter(rounded, torch.tensor(float("-inf"), dtype=dtype)).double()
    r = rounded.double()
    tie = torch.where(want >= r, (r + up) / 2, (r + down) / 2)
    rtol, atol = TOLERANCES[torch.float32]
    settled = ((want - tie).abs() > atol + rtol * want.abs()) | (want == 0)
    settled &= rounded.isfinite()
    wrong = settled & (got.double() != r)
    if wrong.any():
        first = wrong.flatten().nonzero()[0].item()
        raise AssertionError(
            f"{what}: {int(wrong.sum())} of {int(settled.sum())} settled elements are not the "
            f"reference rounded once; first: {got.flatten()[first].item()!r} where the "
            f"reference {want.flatten()[first].item()!r} rounds to {r.flatten()[first].item()!r}"
        )
    # Inputs whose results mostly lie near ties or are infinite would check nothing.
    assert settled.sum() * 4 >= settled.numel(), (
        f"{what}: only {int(settled.sum())} of {settled.numel()} elements settled; "
        "the inputs check too little"
    )
