"""The reference against the textbook formulas, written independently in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LAYOUTS, random_input

from glu_fused import reference


def _halves(x, dim, layout):
    if layout == "halves":
        n = x.shape[dim] // 2
        return x.narrow(dim, 0, n), x.narrow(dim, n, n)
    idx = torch.arange(x.shape[dim] // 2)
    return x.index_select(dim, 2 * idx), x.index_select(dim, 2 * idx + 1)


def _gelu_erf(a):
    return 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))


def _gelu_tanh(a):
    return 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))


def _textbook(name, x1, x2, alpha=1.702, limit=7.0):
    sig = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    if name == "glu":
        return x1 * sig(x2)
    if name == "swiglu":
        return x1 * sig(x1) * x2
    if name == "geglu":
        return _gelu_erf(x1) * x2
    if name == "geglu_tanh":
        return _gelu_tanh(x1) * x2
    if name == "reglu":
        return torch.where(x1 > 0, x1, 0.0) * x2
    g = torch.where(x1 > limit, limit, x1)
    v = torch.where(x2 > limit, limit, torch.where(x2 < -limit, -limit, x2))
    return g * sig(alpha * g) * (v + 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize(
    "name", ["glu", "swiglu", "geglu", "geglu_tanh", "reglu", "clamped_swiglu"]
)
def test_reference_is_the_textbook_formula(name, dim, layout):
    x = random_input((6, 8, 10), torch.float64)
    call = {
        "geglu": lambda: reference.geglu(x, dim, layout=layout),
        "geglu_tanh": lambda: reference.geglu(x, dim, approximate="tanh", layout=layout),
    }.get(name, lambda: getattr(reference, name)(x, dim, layout=layout))
    expected = _textbook(name, *_halves(x, dim, layout))
    torch.testing.assert_close(call(), expected, rtol=1e-12, atol=1e-14)


def test_reference_glu_is_torch_glu():
    x = random_input((6, 12), torch.float64)
    for dim in (0, 1):
        torch.testing.assert_close(reference.glu(x, dim), F.glu(x, dim), rtol=1e-14, atol=1e-15)


def test_gated_reference_matches_its_activations():
    g, v = random_input((4, 9), torch.float64), random_input((4, 9), torch.float64)
    expected = {
        "sigmoid": torch.sigmoid(g) * v,
        "silu": F.silu(g) * v,
        "gelu": F.gelu(g) * v,
        "gelu_tanh": F.gelu(g, approximate="tanh") * v,
        "relu": F.relu(g) * v,
    }
    for activation, want in expected.items():
        torch.testing.assert_close(reference.gated(g, v, activation), want, rtol=1e-12, atol=1e-14)


def test_reference_is_twice_differentiable():
    x = random_input((3, 8), torch.float64).requires_grad_()
    for fn in (
        reference.swiglu,
        reference.clamped_swiglu,
        lambda t: reference.geglu(t, approximate="tanh"),
    ):
        assert torch.autograd.gradgradcheck(fn, (x,))
