"""FP8 in the MLP block: FP8GatedMLP (inference: both GEMMs in FP8, the fused activation and
quantization between them) against the bfloat16 block, its error reported and bounded; and
GatedMLP(fp8=...) (training's forward: the down projection's input quantized by the fused
kernel, its GEMM in FP8, backward unchanged).

Each test loops over the granularities (activations per token or per tensor, weights per
tensor or per row) and the block's layouts and activations it names; the CPU backend runs
them (the FP8 GEMMs are torch._scaled_mm, which runs on the CPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_input
from covering import each, product
from torch import nn

import glu_fused
from glu_fused import _fp8
from glu_fused.nn import FP8GatedMLP, GatedMLP

IN, HIDDEN = 256, 688  # LLaMA's 8/3 ratio, multiples of 16 as FP8 GEMMs want
GRANULARITIES = {"granularity": ["token", "tensor"], "weight_granularity": ["tensor", "row"]}
# The bound on ||FP8 block - bfloat16 block|| / ||bfloat16 block||: e4m3 keeps 3 mantissa
# bits (up to 2^-4 relative per element, about 3.6% in RMS), and x, both weights and h are
# rounded to it; measured 0.063 to 0.067 here for FP8GatedMLP (h and the down weight alone,
# GatedMLP(fp8=): less).
FP8_RELATIVE_ERROR = 0.1


def _llama_block(activation="silu", layout="halves", dtype=torch.bfloat16) -> GatedMLP:
    """A block initialised as LLaMA's (N(0, 0.02) weights), which real checkpoints resemble."""
    torch.manual_seed(torch.seed() % 2**31)
    mlp = GatedMLP(IN, HIDDEN, activation=activation, layout=layout, dtype=dtype)
    mlp.reset_parameters(std=0.02)
    return mlp


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_fp8_block_error_against_the_bfloat16_block_is_bounded():
    mlp = _llama_block()
    x = random_input((64, IN), torch.bfloat16, scale=1.0)
    with torch.no_grad():
        expected = mlp(x)
    errors = {}

    def check(granularity, weight_granularity):
        fp8 = FP8GatedMLP.from_float(mlp, granularity, weight_granularity)
        out = fp8(x)
        assert out.dtype == x.dtype and out.shape == expected.shape
        errors[(granularity, weight_granularity)] = err = _relative(out, expected)
        assert 0 < err < FP8_RELATIVE_ERROR, f"relative error {err:.4f}"

    each(product(GRANULARITIES), check)
    print("FP8GatedMLP relative error against the bfloat16 block:", errors)


def test_fp8_block_from_a_llama_style_mlp_with_bias_and_float32():
    class LlamaMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(IN, HIDDEN, bias=True)
            self.up_proj = nn.Linear(IN, HIDDEN, bias=True)
            self.down_proj = nn.Linear(HIDDEN, IN, bias=True)
            self.act_fn = nn.GELU(approximate="tanh")

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    llama = LlamaMLP()
    x = random_input((3, 5, IN), torch.float32, scale=1.0)
    fp8 = FP8GatedMLP.from_float(llama, "token", "row")
    assert fp8.activation == "gelu_tanh"
    with torch.no_grad():
        err = _relative(fp8(x), llama(x))
    assert 0 < err < FP8_RELATIVE_ERROR


def test_fp8_block_checks_its_input_and_options():
    fp8 = FP8GatedMLP.from_float(_llama_block())
    with pytest.raises(ValueError, match="takes inputs of 256 features"):
        fp8(torch.randn(2, 17, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unknown FP8 granularity"):
        FP8GatedMLP.from_float(_llama_block(), "group")
    with pytest.raises(ValueError, match="unknown weight granularity"):
        FP8GatedMLP.from_float(_llama_block(), "token", "column")


def _grads(mlp, x, dy):
    x = x.detach().requires_grad_()
    out = mlp(x)
    out.backward(dy)
    return out, [x.grad, *(p.grad for p in mlp.parameters())]


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_gated_mlp_fp8_forward_is_close_and_its_backward_is_the_plain_one(layout):
    """fp8=: the forward within FP8's error of the plain block's; the gradients, for the same
    upstream gradient, bit for bit the plain block's (backward runs in the input's dtype)."""

    def check(fp8, activation):
        plain = _llama_block(activation, layout, torch.float32)
        quantized = GatedMLP(IN, HIDDEN, activation=activation, layout=layout, fp8=fp8)
        quantized.load_state_dict(plain.state_dict())
        x = random_input((32, IN), torch.float32, scale=1.0)
        dy = random_input((32, IN), torch.float32, scale=1.0)
        out_plain, grads_plain = _grads(plain, x, dy)
        out_fp8, grads_fp8 = _grads(quantized, x, dy)
        err = _relative(out_fp8, out_plain)
        assert 0 < err < FP8_RELATIVE_ERROR, f"forward relative error {err:.4f}"
        for a, b in zip(grads_fp8, grads_plain):
            assert torch.equal(a, b), "backward changed"
        with torch.no_grad():  # the plain path (no lean block) computes the same forward
            assert torch.equal(quantized(x), out_fp8.detach())

    each(product({"fp8": ["token", "tensor"], "activation": ["silu", "sigmoid"]}), check)


def test_gated_mlp_fp8_is_an_option_like_the_others():
    mlp = GatedMLP(IN, HIDDEN)
    x = random_input((4, IN), torch.float32, scale=1.0)
    with torch.no_grad():
        plain = mlp(x)
        mlp.fp8 = "token"
        quantized = mlp(x)
        assert not torch.equal(plain, quantized) and _relative(quantized, plain) < 0.08
        mlp.fp8 = None
        assert torch.equal(mlp(x), plain)
    with pytest.raises(ValueError, match="unknown FP8 granularity"):
        mlp.fp8 = "mx"
    unfused = nn.Module()
    unfused.gate_proj, unfused.up_proj = nn.Linear(IN, HIDDEN), nn.Linear(IN, HIDDEN)
    unfused.down_proj, unfused.act_fn = nn.Linear(HIDDEN, IN), F.silu
    assert GatedMLP.from_mlp(unfused, fp8="tensor").fp8 == "tensor"


def test_gated_mlp_fp8_compiles_fullgraph():
    mlp = GatedMLP(IN, HIDDEN, fp8="token")
    x = random_input((8, IN), torch.float32, scale=1.0).requires_grad_()
    eager = mlp(x)
    compiled = torch.compile(mlp, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    compiled.sum().backward()
    assert x.grad is not None


def test_the_quantized_block_runs_on_every_backend_here():
    mlp = _llama_block()
    x = random_input((8, IN), torch.bfloat16, scale=1.0)
    outs = {}
    for backend in ("cpu", "reference"):
        if backend in glu_fused.available_backends():
            with glu_fused.use_backend(backend):
                outs[backend] = FP8GatedMLP.from_float(mlp)(x)
    assert len(set(map(lambda t: t.float().sum().item(), outs.values()))) == 1, outs


@pytest.mark.skipif(
    not _fp8._CPU_SCALES_ROWS, reason="this torch's CPU _scaled_mm has no per-row scales"
)
def test_per_row_scales_where_scaled_mm_takes_per_tensor_ones_only(monkeypatch):
    """torch 2.11's CPU _scaled_mm scales per tensor only: the per-row scales go after the
    GEMM, said once, and give what the GEMM's own per-row scaling gives."""
    x = random_input((32, 2 * HIDDEN), torch.bfloat16, scale=1.0)
    w = random_input((IN, HIDDEN), torch.float32, scale=0.02)
    with torch.no_grad():
        q, s = glu_fused.swiglu(x, out_dtype=torch.float8_e4m3fn)
    w_q, w_s = _fp8.quantize_weight(w, "row")
    native = _fp8.scaled_linear(q, s, w_q, w_s, None, torch.float32)
    monkeypatch.setattr(_fp8, "_CPU_SCALES_ROWS", False)
    monkeypatch.setattr(_fp8, "_ROWS_AFTER_WARNED", [])
    with pytest.warns(UserWarning, match="scales per tensor only"):
        after = _fp8.scaled_linear(q, s, w_q, w_s, None, torch.float32)
    torch.testing.assert_close(after, native, rtol=1e-5, atol=1e-6)
