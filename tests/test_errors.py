"""Bad input raises the named error, with a message naming the problem, before anything runs."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params, device_of, ops_of

import glu_fused

PACKED = ["glu", "swiglu", "geglu", "reglu", "clamped_swiglu"]


@pytest.fixture(params=backend_params())
def backend(request):
    with glu_fused.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("name", PACKED)
def test_odd_size_along_dim(backend, name):
    with pytest.raises(ValueError, match="must be even"):
        getattr(glu_fused, name)(torch.randn(4, 7, device=device_of(backend)))


@pytest.mark.parametrize("dim", [2, -3, 5])
@pytest.mark.parametrize("name", PACKED)
def test_dim_out_of_range(backend, name, dim):
    with pytest.raises(ValueError, match="out of range"):
        getattr(glu_fused, name)(torch.randn(4, 8, device=device_of(backend)), dim)


def test_zero_dimensional_input(backend):
    with pytest.raises(ValueError, match="0-dimensional"):
        glu_fused.swiglu(torch.tensor(1.0, device=device_of(backend)))


@pytest.mark.parametrize("name", PACKED)
def test_unknown_layout(backend, name):
    with pytest.raises(ValueError, match="unknown layout 'pairs'"):
        getattr(glu_fused, name)(torch.randn(4, 8, device=device_of(backend)), layout="pairs")


def test_unknown_approximate(backend):
    with pytest.raises(ValueError, match="unknown approximate 'fast'"):
        glu_fused.geglu(torch.randn(4, 8, device=device_of(backend)), approximate="fast")


def test_unknown_activation(backend):
    t = torch.randn(3, 4, device=device_of(backend))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        glu_fused.gated(t, t, "swish")


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (lambda d: torch.randn(3, 5, device=d), "shape"),
        (lambda d: torch.randn(3, 4, device=d, dtype=torch.float64), "dtype"),
        (lambda d: torch.randn(3, 4, device="meta"), "device"),
    ],
    ids=["shape", "dtype", "device"],
)
def test_gate_and_value_must_agree(backend, value, what):
    gate = torch.randn(3, 4, device=device_of(backend))
    with pytest.raises(ValueError, match=f"same {what}"):
        glu_fused.gated(gate, value(device_of(backend)), "silu")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", PACKED)
def test_non_floating_dtype(backend, name, dtype):
    x = torch.ones(4, 8, dtype=dtype, device=device_of(backend))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        getattr(glu_fused, name)(x)


def test_non_floating_gated(backend):
    t = torch.ones(3, 4, dtype=torch.int64, device=device_of(backend))
    with pytest.raises(TypeError, match="gate must be"):
        glu_fused.gated(t, t)


@pytest.mark.parametrize("backend_name", backend_params(("cpu", "cuda", "triton")))
def test_ops_called_directly_check_their_arguments(backend_name):
    """The backends' ops raise the same errors for callers that bypass the Python API."""
    packed, gated = ops_of(backend_name)
    forward = packed.forward

    def t(*shape, dtype=torch.float32):
        return torch.ones(shape, dtype=dtype, device=device_of(backend_name))

    with pytest.raises(ValueError, match="must be even"):
        forward(t(4, 7), 1, "swiglu", "halves", 1.702, 7.0)
    with pytest.raises(ValueError, match="out of range"):
        forward(t(4, 8), 2, "swiglu", "halves", 1.702, 7.0)
    with pytest.raises(ValueError, match="unknown function"):
        forward(t(4, 8), 1, "swish", "halves", 1.702, 7.0)
    with pytest.raises(TypeError, match="float16, bfloat16"):
        forward(t(4, 8, dtype=torch.int32), 1, "swiglu", "halves", 1.702, 7.0)
    with pytest.raises(ValueError, match="same shape"):
        gated.forward(t(2, 3), t(3, 2), "silu")
    with pytest.raises(ValueError, match="unknown activation"):
        gated.forward(t(2, 3), t(2, 3), "swish")
    with pytest.raises(ValueError, match="grad_out has shape"):
        packed.backward(t(4, 3), t(4, 8), 1, "swiglu", "halves", 1.702, 7.0)
    with pytest.raises(ValueError, match="grad_out and gate must have the same shape"):
        gated.backward(t(2, 2), t(2, 3), t(2, 3), "silu")


def test_forced_backend_that_cannot_run_says_why():
    x = torch.randn(4, 8)
    for name, reason in glu_fused.backend_status().items():
        if not reason.startswith("available"):
            with glu_fused.use_backend(name), pytest.raises(RuntimeError, match="cannot run"):
                glu_fused.swiglu(x)
    if glu_fused.backend_status()["cpu"].startswith("available"):
        with glu_fused.use_backend("cpu"), pytest.raises(RuntimeError, match="runs cpu tensors"):
            glu_fused.swiglu(torch.randn(4, 8, device="meta"))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with glu_fused.use_backend("fast"):
            pass


# Bad calls of the public API, each with the error it must raise.
BAD_CALLS = {
    "odd size": lambda d: glu_fused.swiglu(torch.randn(4, 7, device=d)),
    "dim out of range": lambda d: glu_fused.glu(torch.randn(4, 8, device=d), -3),
    "0-dimensional": lambda d: glu_fused.reglu(torch.tensor(1.0, device=d)),
    "unknown layout": lambda d: glu_fused.geglu(torch.randn(4, 8, device=d), layout="pairs"),
    "non-floating x": lambda d: glu_fused.glu(torch.ones(4, 8, dtype=torch.int32, device=d)),
    "unknown activation": lambda d: glu_fused.gated(*torch.randn(2, 3, device=d), "swish"),
    "shapes differ": lambda d: glu_fused.gated(
        torch.randn(3, 4, device=d), torch.randn(3, 5, device=d)
    ),
    "dtypes differ": lambda d: glu_fused.gated(
        torch.randn(3, 4, device=d), torch.randn(3, 4, device=d, dtype=torch.float64)
    ),
    "non-floating gate": lambda d: glu_fused.gated(
        torch.ones(3, 4, dtype=torch.int64, device=d), torch.randn(3, 4, device=d)
    ),
}


def _error_of(call, backend):
    with glu_fused.use_backend(backend), pytest.raises((ValueError, TypeError)) as caught:
        call(device_of(backend))
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("call", list(BAD_CALLS))
@pytest.mark.parametrize("backend_name", backend_params(("cpu", "cuda", "triton")))
def test_ops_and_reference_give_the_same_error(backend_name, call):
    """The ops check in C++, the reference in Python: the same exception, word for word."""
    assert _error_of(BAD_CALLS[call], backend_name) == _error_of(BAD_CALLS[call], "reference")
