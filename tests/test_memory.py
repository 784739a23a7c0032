"""Memory: forward allocates only its result, backward only the input gradient, and the
peak of forward plus backward is never above the reference's. Measured with the CUDA
caching allocator's statistics, so these run where a GPU is."""

from __future__ import annotations

import pytest
import torch
from conftest import FUNCTION_IDS, FUNCTIONS, backend_params, fused, random_input

import glu_fused

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA allocator's statistics need a GPU"
)


def _peak_of_step(fn, kwargs, x, grad):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fused(fn)(x, **kwargs)
    after_forward = torch.cuda.memory_allocated() - base
    (dx,) = torch.autograd.grad(out, x, grad)
    torch.cuda.synchronize()
    return after_forward, torch.cuda.max_memory_allocated() - base, out, dx


@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", backend_params(("cuda", "triton")))
def test_fused_step_allocates_only_results(backend, fn, kwargs):
    x = random_input((256, 2 * 1024), torch.bfloat16, "cuda").requires_grad_()
    grad = random_input((256, 1024), torch.bfloat16, "cuda")
    with glu_fused.use_backend(backend):
        fwd, peak, out, dx = _peak_of_step(fn, kwargs, x, grad)
    assert fwd == out.numel() * out.element_size()
    assert peak <= fwd + dx.numel() * dx.element_size()
    with glu_fused.use_backend("reference"):
        _, ref_peak, _, _ = _peak_of_step(fn, kwargs, x, grad)
    assert peak <= ref_peak
