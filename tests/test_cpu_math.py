"""The CPU kernels' own float32 math, over the whole float range: GeGLU's CDF from one erfc of
|g| / sqrt 2 (a polynomial and one exp below |g| = 4, a rational function and one exp beyond:
csrc/cpu/vec_math.h; the grid covers both and their seam), held to float64 where
the result's relative accuracy shows, its tail multiplied by a huge value."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params

import glu_fused
from glu_fused import reference
from glu_fused.testing import assert_matches

# The CUDA kernels' emulation runs the same element math on the host's scalars.
BACKENDS = backend_params(("cpu",))


def _every_scale_of_float32(n_random: int = 1_000_000) -> torch.Tensor:
    """A dense grid over [-15, 15], every magnitude from 1e-38 to the largest float of both
    signs, and random bit patterns: finite float32s."""
    grid = torch.linspace(-15, 15, 1_000_001, dtype=torch.float64)
    magnitudes = torch.logspace(-38, 38.5, 100_001, dtype=torch.float64)
    bits = torch.randint(-(2**31), 2**31 - 1, (n_random,), dtype=torch.int64).to(torch.int32)
    g = torch.cat([grid, magnitudes, -magnitudes, bits.view(torch.float32).double()]).float()
    return g[g.isfinite()]


@pytest.mark.parametrize("value", [1.0, 1e30], ids=["value-1", "value-1e30"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_geglu_over_the_whole_float32_range(backend, value):
    """gelu(g) * value in float32 within the float32 bound of the float64 reference
    everywhere; with value 1e30 even a tail of 1e-37 is held to 1e-5 relative."""
    g = _every_scale_of_float32()
    v = torch.full_like(g, value)
    with glu_fused.use_backend(backend):
        out = glu_fused.gated(g, v, "gelu")
    assert_matches(out, reference.gated(g.double(), v.double(), "gelu"), torch.float32, "gelu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_geglu_gradients_over_the_whole_float32_range(backend):
    """The gradients, for a unit upstream gradient and value (near g = -0.7518, where
    gelu's slope crosses 0, only a float64 computation keeps a relative accuracy; a huge value
    would expose that in any float32 arithmetic, so the value here is 1)."""
    g = _every_scale_of_float32().requires_grad_()
    v = torch.ones_like(g).requires_grad_()
    with glu_fused.use_backend(backend):
        grads = torch.autograd.grad(glu_fused.gated(g, v, "gelu"), (g, v), torch.ones_like(g))
    g64, v64 = (t.detach().double().requires_grad_() for t in (g, v))
    wants = torch.autograd.grad(reference.gated(g64, v64, "gelu"), (g64, v64), torch.ones_like(g64))
    for got, want, name in zip(grads, wants, ("gate", "value")):
        assert_matches(got, want, torch.float32, f"gelu grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_geglu_gate_is_independent_of_its_neighbours(backend):
    """Gates below 4 take the central form when a whole vector of them is below 4, and each
    its own form otherwise: a gate's result and gradients are bitwise the same either way (a
    vector's lanes never choose a form together)."""
    g = torch.linspace(-3.99, 3.99, 4099)
    mixed = g.clone()
    mixed[::5] = torch.tensor([9.0, -9.0, float("nan"), float("inf")]).repeat(820)[: g[::5].numel()]
    keep = torch.ones_like(g, dtype=torch.bool)
    keep[::5] = False
    with glu_fused.use_backend(backend):
        results = []
        for gate in (g, mixed):
            gate = gate.clone().requires_grad_()
            value = torch.full_like(gate, 3.0).requires_grad_()
            out = glu_fused.gated(gate, value, "gelu")
            grads = torch.autograd.grad(out, (gate, value), torch.ones_like(out))
            results.append([t.detach()[keep] for t in (out, *grads)])
    for alone, among_tails in zip(*results):
        assert torch.equal(alone, among_tails)
