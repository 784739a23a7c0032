"""Every backend against the float64 reference: forward and backward, every function,
layout and dtype, over shapes and views that take each path of the kernels; and the 16-bit
results rounded once, bit for bit.

What runs (tests/covering.py), one pytest item per backend and function (or activation),
each looping over its combinations and reporting every failing one:
* backends that run natively (cpu, reference; cuda and triton on a GPU; cpu again through the
  CUDA kernels' emulation in `make test-cuda-emulated`): the full product of function x
  layout x dtype x case (1232 combinations a backend), and activation x dtype x gated case
  (200);
* triton in its interpreter (tens of milliseconds a launch): layout x dtype x case crossed in
  full, since the kernels' path (vector or scalar, nested runs, tails) is chosen by all three
  together, with the function varied so that every function meets every case, layout and
  dtype (176 combinations instead of 1232; gated: dtype x case in full, 40 instead of 200).
  `make test-full` runs the full product there too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    DTYPES,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    assert_matches,
    backend_params,
    combinations,
    device_of,
    fused,
    interpreted,
    random_input,
    ref,
)
from covering import each, product, select

import glu_fused
from glu_fused import reference
from glu_fused.testing import assert_rounded_once


def _sliced(shape, dtype, device, lead, trail):
    """A view of `shape` whose rows start `lead` elements into wider rows (row stride and
    start not 16-byte aligned)."""
    *outer, last = shape
    base = random_input((*outer, lead + last + trail), dtype, device)
    return base[..., lead : lead + last]


def _offset_by_one(shape, dtype, device):
    n = 1
    for s in shape:
        n *= s
    return random_input((n + 1,), dtype, device)[1:].view(shape)


# name -> (make(dtype, device) -> x, dim). Sizes along the split are chosen so that runs
# have vector blocks and ragged tails.
CASES = {
    "1d": (lambda dt, dev: random_input((2 * 37,), dt, dev), 0),
    "2d": (lambda dt, dev: random_input((7, 2 * 50), dt, dev), -1),
    "3d-middle-dim": (lambda dt, dev: random_input((3, 2 * 5, 7), dt, dev), 1),
    "4d-first-dim": (lambda dt, dev: random_input((2 * 3, 2, 3, 5), dt, dev), 0),
    "4d-negative-dim": (lambda dt, dev: random_input((2, 2 * 6, 3, 4), dt, dev), -3),
    "tiny": (lambda dt, dev: random_input((1, 2), dt, dev), -1),
    "long-rows": (lambda dt, dev: random_input((2, 2 * 1037), dt, dev), -1),
    "odd-half": (lambda dt, dev: random_input((3, 2 * 9), dt, dev), -1),
    "row-strided": (lambda dt, dev: _sliced((6, 2 * 40), dt, dev, 3, 5), -1),
    "misaligned": (lambda dt, dev: _offset_by_one((5, 2 * 33), dt, dev), -1),
    "misaligned-middle-dim": (lambda dt, dev: _offset_by_one((3, 2 * 4, 9), dt, dev), 1),
    "transposed": (lambda dt, dev: random_input((2 * 20, 6), dt, dev).t(), -1),
    "outer-not-collapsible": (
        lambda dt, dev: random_input((4, 5, 2 * 8), dt, dev).transpose(0, 1),
        -1,
    ),
    "expanded-rows": (lambda dt, dev: random_input((1, 2 * 24), dt, dev).expand(4, 48), -1),
    "expanded-inner": (lambda dt, dev: random_input((2 * 4, 1), dt, dev).expand(8, 6), 0),
    # Halves of 16 bytes' multiples: the CUDA kernels' vector path, for every dtype.
    "vector-rows": (lambda dt, dev: random_input((5, 2 * 64), dt, dev), -1),
    # Rows longer than one block's part: several blocks per row, the last part ragged.
    "vector-long-rows": (lambda dt, dev: random_input((3, 2 * 4104), dt, dev), -1),
    "vector-middle-dim": (lambda dt, dev: random_input((3, 2 * 4, 16), dt, dev), 1),
    # The first row starts aligned, the others do not (row stride 81): no vector path.
    "odd-row-stride": (lambda dt, dev: _sliced((6, 2 * 40), dt, dev, 0, 1), -1),
    # Split along a middle dim: runs of 16 aligned elements, but 17 apart: no vector path.
    "odd-run-stride": (lambda dt, dev: _sliced((2, 2 * 4, 16), dt, dev, 0, 1), 1),
    "empty-rows": (lambda dt, dev: random_input((0, 2 * 8), dt, dev), -1),
    "empty-split": (lambda dt, dev: random_input((4, 0), dt, dev), -1),
}


def _call(fn, x, dim, layout, kwargs):
    return fused(fn)(x, dim, layout=layout, **kwargs)


def _reference64(fn, x, dim, layout, kwargs):
    return ref(fn)(x.double(), dim, layout=layout, **kwargs)


def _check_packed(backend, fn, kwargs, layout, dtype, case):
    make, dim = CASES[case]
    x = make(dtype, device_of(backend)).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with glu_fused.use_backend(backend):
        out = _call(fn, x, dim, layout, kwargs)
    expected = _reference64(fn, x64, dim, layout, kwargs)
    assert out.is_contiguous(), "result not contiguous"
    assert out.device == x.device, "result on another device"
    assert_matches(out, expected, dtype, f"{fn} forward")

    grad_out = random_input(out.shape, dtype, x.device, scale=1.0)
    with glu_fused.use_backend(backend):
        (grad,) = torch.autograd.grad(out, x, grad_out)
    (grad64,) = torch.autograd.grad(expected, x64, grad_out.double())
    assert grad.shape == x.shape, f"gradient of shape {tuple(grad.shape)}"
    assert_matches(grad, grad64, dtype, f"{fn} backward")


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", backend_params())
def test_forward_and_backward_match_reference(backend, function):
    fn, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]
    params = {"function": FUNCTION_IDS, "layout": LAYOUTS, "dtype": DTYPES, "case": list(CASES)}
    rows = select(combinations(backend, params, [("layout", "dtype", "case")]), function=function)
    each(rows, lambda **row: _check_packed(backend, fn, kwargs, **row))


GATED_CASES = {
    "2d": lambda dt, dev: (random_input((7, 33), dt, dev), random_input((7, 33), dt, dev)),
    "3d": lambda dt, dev: (random_input((2, 3, 40), dt, dev), random_input((2, 3, 40), dt, dev)),
    "0d": lambda dt, dev: (random_input((), dt, dev), random_input((), dt, dev)),
    "halves-of-one-projection": lambda dt, dev: random_input((5, 2 * 40), dt, dev).chunk(2, -1),
    "expanded-value": lambda dt, dev: (
        random_input((6, 19), dt, dev),
        random_input((1, 19), dt, dev).expand(6, 19),
    ),
    "different-strides": lambda dt, dev: (
        random_input((9, 12), dt, dev),
        random_input((12, 9), dt, dev).t(),
    ),
    "misaligned": lambda dt, dev: (
        _offset_by_one((4, 21), dt, dev),
        _offset_by_one((4, 21), dt, dev),
    ),
    "vector-rows": lambda dt, dev: (
        random_input((3, 4, 32), dt, dev),
        random_input((3, 4, 32), dt, dev),
    ),
    "odd-row-stride": lambda dt, dev: (
        _sliced((5, 16), dt, dev, 0, 1),
        _sliced((5, 16), dt, dev, 0, 1),
    ),
    "empty": lambda dt, dev: (random_input((0, 5), dt, dev), random_input((0, 5), dt, dev)),
}


def _check_gated(backend, activation, dtype, case):
    gate, value = GATED_CASES[case](dtype, device_of(backend))
    gate, value = gate.requires_grad_(), value.requires_grad_()
    g64, v64 = (t.detach().double().requires_grad_() for t in (gate, value))
    with glu_fused.use_backend(backend):
        out = glu_fused.gated(gate, value, activation)
    expected = reference.gated(g64, v64, activation)
    assert out.is_contiguous(), "result not contiguous"
    assert_matches(out, expected, dtype, f"gated {activation} forward")

    grad_out = random_input(out.shape, dtype, gate.device, scale=1.0)
    with glu_fused.use_backend(backend):
        grads = torch.autograd.grad(out, (gate, value), grad_out)
    grads64 = torch.autograd.grad(expected, (g64, v64), grad_out.double())
    for got, want, name in zip(grads, grads64, ("gate", "value")):
        assert_matches(got, want, dtype, f"gated {activation} grad {name}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", backend_params())
def test_gated_matches_reference(backend, activation):
    params = {"activation": ACTIVATIONS, "dtype": DTYPES, "case": list(GATED_CASES)}
    rows = select(combinations(backend, params, [("dtype", "case")]), activation=activation)
    each(rows, lambda **row: _check_gated(backend, activation, **row))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_reference_rounds_once_from_float32(dtype):
    """The reference's low-precision result is its float32 result rounded once."""
    x = random_input((4, 64), dtype)
    expected = reference.swiglu(x.float()).to(dtype)
    assert torch.equal(reference.swiglu(x), expected)


# ---- rounded once ---------------------------------------------------------------------------

ROUNDING_INPUTS = {
    # Rows of 16-byte multiples: the vector paths.
    "aligned": lambda dt, dev: random_input((16, 2 * 256), dt, dev),
    # The same one element off: the scalar paths (and the CUDA kernels' phased ones).
    "misaligned": lambda dt, dev: random_input((16 * 2 * 256 + 1,), dt, dev)[1:].view(16, 512),
}


def _rounding_check(backend, dtype):
    if interpreted(backend) and dtype == torch.bfloat16:
        pytest.skip(
            "Triton's interpreter casts float32 to bfloat16 by truncation (its cast_impl takes "
            "no rounding mode), so only a GPU shows the triton backend's bfloat16 rounding"
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params())
def test_16_bit_results_are_the_reference_rounded_once(backend, dtype):
    """Every result and gradient of every function, in float16 and bfloat16, equals the
    float64 reference rounded to the dtype, bit for bit, wherever float32 arithmetic settles
    that rounding (glu_fused.testing.assert_rounded_once says where): a kernel that truncates,
    or rounds twice, fails here though it passes the tolerance of one unit in the last place."""
    _rounding_check(backend, dtype)
    device = device_of(backend)

    def check(function, inputs):
        if function in ACTIVATIONS:
            return gated(function, inputs)
        fn, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]
        x = ROUNDING_INPUTS[inputs](dtype, device).requires_grad_()
        x64 = x.detach().double().requires_grad_()
        with glu_fused.use_backend(backend):
            out = fused(fn)(x, **kwargs)
        want = ref(fn)(x64, **kwargs)
        assert_rounded_once(out, want, f"{function} forward")
        grad_out = random_input(out.shape, dtype, device, scale=1.0)
        with glu_fused.use_backend(backend):
            (grad,) = torch.autograd.grad(out, x, grad_out)
        (grad64,) = torch.autograd.grad(want, x64, grad_out.double())
        assert_rounded_once(grad, grad64, f"{function} backward")

    def gated(activation, inputs):
        gate, value = ROUNDING_INPUTS[inputs](dtype, device).chunk(2, -1)
        g64, v64 = (t.double().requires_grad_() for t in (gate, value))
        dy = random_input(gate.shape, dtype, device, scale=1.0)
        with glu_fused.use_backend(backend):
            g, v = gate.clone().requires_grad_(), value.clone().requires_grad_()
            out = glu_fused.gated(g, v, activation)
            grads = torch.autograd.grad(out, (g, v), dy)
        want = reference.gated(g64, v64, activation)
        grads64 = torch.autograd.grad(want, (g64, v64), dy.double())
        assert_rounded_once(out, want, f"gated {activation} forward")
        for got, exp, name in zip(grads, grads64, ("gate", "value")):
            assert_rounded_once(got, exp, f"gated {activation} grad {name}")
        # The lean MLP's in-place backward: h over dy, the gradients over gate and value.
        h, d_gate, d_value = dy.clone(), gate.clone(), value.clone()
        with glu_fused.use_backend(backend):
            route = glu_fused.backends.route(h.device.type)
            route.gated_backward_in_place(h, d_gate, d_value, activation)
        for got, exp, name in zip((h, d_gate, d_value), (want, *grads64), ("h", "gate", "value")):
            assert_rounded_once(got, exp, f"in-place {activation} {name}")

    functions = [*FUNCTION_IDS, *ACTIVATIONS]  # the packed functions, then gated's activations
    each(product({"function": functions, "inputs": list(ROUNDING_INPUTS)}), check)
