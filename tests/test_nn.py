"""The modules: drop-ins for torch.nn.GLU and friends, and GatedMLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import glu_fused
from glu_fused import _table, reference
from glu_fused import nn as gnn


def test_glu_is_a_drop_in_for_torch_glu():
    x = torch.randn(4, 6, 10, dtype=torch.float64)
    for dim in (-1, 1):
        torch.testing.assert_close(gnn.GLU(dim)(x), torch.nn.GLU(dim)(x), rtol=1e-10, atol=1e-12)
    assert repr(gnn.GLU(1)) == "GLU(dim=1)"


@pytest.mark.parametrize(
    ("module", "ref"),
    [
        (gnn.SwiGLU(), reference.swiglu),
        (gnn.ReGLU(), reference.reglu),
        (gnn.GeGLU(), reference.geglu),
        (gnn.GeGLU(approximate="tanh"), lambda x: reference.geglu(x, approximate="tanh")),
    ],
    ids=["swiglu", "reglu", "geglu", "geglu-tanh"],
)
def test_activation_modules(module, ref):
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(module(x), ref(x), rtol=1e-10, atol=1e-12)


def test_geglu_checks_approximate():
    with pytest.raises(ValueError, match="unknown approximate"):
        gnn.GeGLU(approximate="fast")


@pytest.mark.parametrize("activation", list(_table.GATE_ACTIVATIONS))
def test_gated_mlp_is_down_of_act_gate_times_up(activation):
    torch.manual_seed(0)
    mlp = gnn.GatedMLP(12, 20, 8, activation=activation, bias=True, dtype=torch.float64)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    gate_w, up_w = mlp.gate_up.weight.chunk(2, 0)
    gate_b, up_b = mlp.gate_up.bias.chunk(2, 0)
    act = _table.GATE_ACTIVATIONS[activation].torch_form  # as PyTorch users write it
    hidden = act(F.linear(x, gate_w, gate_b)) * F.linear(x, up_w, up_b)
    expected = F.linear(hidden, mlp.down.weight, mlp.down.bias)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-10, atol=1e-12)
    assert mlp.down.out_features == 8 and mlp.gate_up.out_features == 40


def test_gated_mlp_defaults_and_factory_kwargs():
    mlp = gnn.GatedMLP(16, 32, dtype=torch.bfloat16)
    assert mlp.down.out_features == 16 and mlp.gate_up.bias is None
    assert mlp.gate_up.weight.dtype == torch.bfloat16
    out = mlp(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.shape == (3, 16) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown activation"):
        gnn.GatedMLP(4, 8, activation="swish")


def test_gated_mlp_trains():
    mlp = gnn.GatedMLP(8, 16)
    with glu_fused.use_backend("reference"):
        x = torch.randn(4, 8)
        mlp(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
