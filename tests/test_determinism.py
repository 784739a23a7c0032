"""Bitwise reproducibility and batch invariance: an element's result depends only on its
own inputs, whatever the tensor's size, batch, offset or alignment.

One pytest item per backend and function, looping over layout x dtype: the full product
where the kernels run natively, a covering design in Triton's interpreter (every function
with every layout and dtype; tests/covering.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DTYPES,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    assert_matches,
    backend_params,
    combinations,
    device_of,
    fused,
    random_input,
)
from covering import each, select

import glu_fused
from glu_fused import reference

BACKENDS = backend_params(("cpu", "cuda", "triton"))


def _fwd_bwd(fn, x, grad, layout, kwargs, dim=-1):
    x = x.detach().requires_grad_()
    out = fused(fn)(x, dim, layout=layout, **kwargs)
    (dx,) = torch.autograd.grad(out, x, grad)
    return out.detach(), dx


def _rows(backend, function, dtypes):
    params = {"function": FUNCTION_IDS, "layout": LAYOUTS, "dtype": dtypes}
    return select(combinations(backend, params), function=function)


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_reproducible_and_batch_invariant(backend, function):
    fn, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]
    rows = _rows(backend, function, [torch.bfloat16, torch.float32])
    each(rows, lambda layout, dtype: _reproducible(backend, fn, kwargs, layout, dtype))


def _reproducible(backend, fn, kwargs, layout, dtype):
    dev = device_of(backend)
    hidden = 2 * 301  # runs with full vector blocks and a ragged tail
    batch = random_input((64, hidden), dtype, dev)
    grad = random_input((64, hidden // 2), dtype, dev, scale=1.0)
    with glu_fused.use_backend(backend):
        out, dx = _fwd_bwd(fn, batch, grad, layout, kwargs)
        out2, dx2 = _fwd_bwd(fn, batch, grad, layout, kwargs)
        assert torch.equal(out, out2) and torch.equal(dx, dx2), "not reproducible"
        for row in (0, 17, 63):
            alone, dx_alone = _fwd_bwd(
                fn, batch[row : row + 1], grad[row : row + 1], layout, kwargs
            )
            assert torch.equal(alone[0], out[row]), f"row {row} depends on its batch"
            assert torch.equal(dx_alone[0], dx[row]), f"row {row}'s gradient depends on its batch"
        # The same row at an odd offset inside a wider, misaligned buffer.
        wide = random_input((3, hidden + 7), dtype, dev)
        wide[1, 3 : 3 + hidden] = batch[5]
        shifted, dx_shifted = _fwd_bwd(fn, wide[:, 3 : 3 + hidden], grad[4:7], layout, kwargs)
        assert torch.equal(shifted[1], out[5])
        assert torch.equal(dx_shifted[1], dx[5])
        # Elements in the tail of a short run equal the same elements inside a long run.
        prefix, _ = _fwd_bwd(fn, _prefix_of(batch[:2], layout, 11), grad[:2, :11], layout, kwargs)
        assert torch.equal(prefix, out[:2, :11])


def _prefix_of(x, layout, n):
    """The input whose result is the first n outputs of x's."""
    if layout == "interleaved":
        return x[:, : 2 * n]
    half = x.shape[-1] // 2
    return torch.cat([x[:, :n], x[:, half : half + n]], dim=-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_batch_invariant(backend):
    dev = device_of(backend)
    g, v = random_input((32, 133), torch.float32, dev), random_input((32, 133), torch.float32, dev)
    with glu_fused.use_backend(backend):
        out = glu_fused.gated(g, v, "gelu_tanh")
        assert torch.equal(out, glu_fused.gated(g, v, "gelu_tanh"))
        assert torch.equal(glu_fused.gated(g[7:9], v[7:9], "gelu_tanh"), out[7:9])
        assert torch.equal(glu_fused.gated(g[:, 5:], v[:, 5:], "gelu_tanh"), out[:, 5:])


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_and_scalar_paths_agree_bitwise(backend, function):
    """Rows whose every tensor starts 16-byte aligned take the kernels' vector path; the
    same rows one element off take the scalar path. Each element's result is the same."""
    fn, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]
    rows = _rows(backend, function, DTYPES)
    each(rows, lambda layout, dtype: _paths_agree(backend, fn, kwargs, layout, dtype))


def _paths_agree(backend, fn, kwargs, layout, dtype):
    dev = device_of(backend)
    hidden = 2 * 8 * 19  # each half of each row: a whole number of 16-byte vectors
    x = random_input((16, hidden), dtype, dev)
    grad = random_input((16, hidden // 2), dtype, dev, scale=1.0)
    x_off = random_input((16, hidden + 1), dtype, dev)
    x_off[:, 1:] = x
    grad_off = random_input((16, hidden // 2 + 1), dtype, dev)
    grad_off[:, 1:] = grad
    with glu_fused.use_backend(backend):
        out, dx = _fwd_bwd(fn, x, grad, layout, kwargs)
        out_off, dx_off = _fwd_bwd(fn, x_off[:, 1:], grad_off[:, 1:], layout, kwargs)
    assert torch.equal(out, out_off), "forward: the two paths differ"
    assert torch.equal(dx, dx_off), "backward: the two paths differ"


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
def test_results_do_not_depend_on_the_thread_split(backend):
    """The CPU kernels split the outputs over threads in tasks of 32768 elements
    (at::parallel_for), so that tasks begin and end inside rows: with 1 thread and with 3,
    every result and gradient is the same, bit for bit, and right."""
    rows, half = 97, 1013  # 98261 outputs: 3 tasks and a part, each starting mid-row
    x = random_input((rows, 2 * half), torch.bfloat16).requires_grad_()
    grad = random_input((rows, half), torch.bfloat16, scale=1.0)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            with glu_fused.use_backend(backend):
                runs.append(_fwd_bwd("geglu", x, grad, "interleaved", {}))
    finally:
        torch.set_num_threads(threads)
    (out1, dx1), (out3, dx3) = runs
    assert torch.equal(out1, out3) and torch.equal(dx1, dx3), "results depend on the threads"
    x64 = x.detach().double().requires_grad_()
    want = reference.geglu(x64, layout="interleaved")
    (dx64,) = torch.autograd.grad(want, x64, grad.double())
    assert_matches(out3, want, torch.bfloat16, "forward")
    assert_matches(dx3, dx64, torch.bfloat16, "backward")
