"""Extreme inputs: the dtype's largest values, infinities and NaN. Results are NaN only where
the reference is, finite where it is finite, infinite where it is infinite.

One pytest item per backend and function (or activation), looping over layout x dtype in
full: every pair of special values is one tensor, so a combination costs one launch each way.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    assert_matches,
    backend_params,
    device_of,
    fused,
    ref,
)
from covering import each, product

import glu_fused
from glu_fused import _ops, reference

BACKENDS = backend_params(("cpu", "cuda", "triton"))
LOW_PRECISION = [torch.float16, torch.bfloat16, torch.float32]


def _specials(dtype, with_nonfinite):
    """Values from 0 to the dtype's max. (float64 stops at 1e100, whose square is finite.)

    No gate lies where its activation is a float32 subnormal (sigmoid(x) for x near -100):
    multiplied by a value near the dtype's max, no float32 arithmetic, which the spec asks
    for, can carry that factor to the float64 reference's 1e-5 accuracy.
    """
    big = torch.finfo(dtype).max if dtype != torch.float64 else 1e100
    vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        7.0,
        -7.0,
        30.0,
        -30.0,
        50.0,
        -50.0,
        1e4,
        -1e4,
        big,
        -big,
        big / 2,
        -big / 2,
    ]
    if with_nonfinite:
        # Next to an infinite value, only gates whose activation neither vanishes nor
        # underflows in both float32 and float64 alike: gelu(-30) is 0 in float32, not in
        # float64, so inf * it is NaN in one and -inf in the other.
        vals = [v for v in vals if abs(v) not in (30.0, 50.0)]
        vals += [float("inf"), float("-inf"), float("nan")]
    return torch.tensor(vals, dtype=torch.float64)


def _all_pairs(dtype, device, with_nonfinite):
    """Every (x1, x2) combination of special values, packed along the last dim."""
    v = _specials(dtype, with_nonfinite)
    x1, x2 = torch.cartesian_prod(v, v).unbind(-1)
    return x1.to(dtype).to(device), x2.to(dtype).to(device)


def _pack(x1, x2, layout):
    if layout == "interleaved":
        return torch.stack([x1, x2], -1).flatten(-2)
    return torch.cat([x1, x2], -1)


def _function(function):
    return FUNCTIONS[FUNCTION_IDS.index(function)]


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_finite_values_do_not_overflow(backend, function):
    fn, kwargs = _function(function)
    rows = product({"layout": LAYOUTS, "dtype": LOW_PRECISION + [torch.float64]})
    each(rows, lambda layout, dtype: _large_finite(backend, fn, kwargs, layout, dtype))


def _large_finite(backend, fn, kwargs, layout, dtype):
    x1, x2 = _all_pairs(dtype, device_of(backend), with_nonfinite=False)
    x = _pack(x1, x2, layout).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with glu_fused.use_backend(backend):
        out = fused(fn)(x, layout=layout, **kwargs)
    want = ref(fn)(x64, layout=layout, **kwargs)
    assert_matches(out, want, dtype, f"{fn} forward")
    grad = torch.ones_like(out)
    with glu_fused.use_backend(backend):
        (dx,) = torch.autograd.grad(out, x, grad)
    (dx64,) = torch.autograd.grad(want, x64, grad.double())
    assert_matches(dx, dx64, dtype, f"{fn} backward")


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_follow_the_reference(backend, function):
    fn, kwargs = _function(function)
    rows = product({"layout": LAYOUTS, "dtype": LOW_PRECISION})
    each(rows, lambda layout, dtype: _nan_and_inf(backend, fn, kwargs, layout, dtype))


def _nan_and_inf(backend, fn, kwargs, layout, dtype):
    x1, x2 = _all_pairs(dtype, device_of(backend), with_nonfinite=True)
    x = _pack(x1, x2, layout)
    with glu_fused.use_backend(backend):
        out = fused(fn)(x, layout=layout, **kwargs)
    want = ref(fn)(x.double(), layout=layout, **kwargs)
    assert_matches(out, want, dtype, f"{fn} forward")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_extremes(backend, activation):
    g, v = _all_pairs(torch.float32, device_of(backend), with_nonfinite=True)
    with glu_fused.use_backend(backend):
        out = glu_fused.gated(g, v, activation)
    assert_matches(out, reference.gated(g.double(), v.double(), activation), torch.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_backward_on_extremes_is_the_out_of_place_ops(backend, activation):
    """The lean MLP's in-place backward writes, bit for bit (NaNs where they are), what the
    same backend's forward and backward ops return, on every pair of special values."""
    rows = product({"dtype": [torch.bfloat16, torch.float32]})
    each(rows, lambda dtype: _in_place_extremes(backend, activation, dtype))


def _in_place_extremes(backend, activation, dtype):
    g, v = _all_pairs(dtype, device_of(backend), with_nonfinite=True)
    dy = torch.randn(g.shape, dtype=torch.float64).mul_(3).to(dtype).to(g.device)
    ops = _ops.GATED[glu_fused.backends.BACKENDS[backend].family]
    want_y = ops.forward(g, v, activation)
    want_dg, want_dv = ops.backward(dy, g, v, activation)
    y, dg, dv = dy.clone(), g.clone(), v.clone()
    ops.backward_in_place(y, dg, dv, activation)
    for got, want in ((y, want_y), (dg, want_dg), (dv, want_dv)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
