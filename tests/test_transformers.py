"""glu_fused.integrations.transformers: tiny randomly initialised Hugging Face models, built
from their configs (nothing downloaded), patched and unpatched. Logits and every
parameter's gradient must match the unpatched model's."""

from __future__ import annotations

import subprocess
import sys
import zlib

import pytest
import torch
from conftest import TOLERANCES

transformers = pytest.importorskip(
    "transformers",
    reason="the Hugging Face integration is tested with transformers installed "
    "(pip install transformers, or the 'hf' extra)",
)

import glu_fused  # noqa: E402
from glu_fused.integrations import transformers as glu_hf  # noqa: E402
from glu_fused.nn import GatedMLP  # noqa: E402

VOCAB = 96
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
}
LLAMA_BIAS_GELU = {"mlp_bias": True, "hidden_act": "gelu"}
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 48}

# family: (config class name, config overrides, the modules patch finds, their activation)
FAMILIES = {
    "llama": ("LlamaConfig", {}, "LlamaMLP", "silu"),
    "llama-bias-gelu": (
        "LlamaConfig",
        {"mlp_bias": True, "hidden_act": "gelu"},
        "LlamaMLP",
        "gelu",
    ),
    "mistral": ("MistralConfig", {}, "MistralMLP", "silu"),
    "qwen2": ("Qwen2Config", {}, "Qwen2MLP", "silu"),
    "qwen3": ("Qwen3Config", {}, "Qwen3MLP", "silu"),
    "gemma": ("GemmaConfig", {}, "GemmaMLP", "gelu_tanh"),
    "gpt_oss": ("GptOssConfig", {"num_local_experts": 4, **MOE}, "GptOssExperts", None),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, **MOE}, "Qwen3MoeExperts", "silu"),
}
# The clamped SwiGLU's bounds matter only for gate/up values beyond gpt-oss's limit (7):
# transformers' init (std 0.02) never gets there, this does.
GPT_OSS_GATE_UP_SCALE = 25.0


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def _tiny_model(family: str, dtype: torch.dtype, experts: str | None = None):
    config_name, overrides, _, _ = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**TINY, **overrides})
    torch.manual_seed(_seed(family, "weights"))
    kwargs = {"attn_implementation": "eager"}
    if experts is not None:
        kwargs["experts_implementation"] = experts
    model = transformers.AutoModelForCausalLM.from_config(config, **kwargs).to(dtype)
    if family == "gpt_oss":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.experts.gate_up_proj.mul_(GPT_OSS_GATE_UP_SCALE)
    return model


def _logits_and_grads(model, ids, cotangent):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    logits.backward(cotangent)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of glu_fused's two front-door entries, through which every fused
    function reaches a backend's op."""
    calls = []
    for name in ("packed", "gated"):
        real = getattr(glu_fused.functional, name)

        def counted(*args, real=real, name=name, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(glu_fused.functional, name, counted)
    return calls


def _assert_all_close(got, want, dtype, what):
    """The spec's (rtol, atol) for `dtype`. In float32, atol is taken relative to the tensor's
    largest element: a whole model's logits and gradients are long sums whose rounding
    error scales with their terms, not with a result that cancels to near zero. In float64
    the bound is the spec's as it stands."""
    rtol, atol = TOLERANCES[dtype]
    if dtype != torch.float64:
        atol *= max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# Experts: float64 runs batched_mm (grouped_mm has no float64 kernel), float32 transformers'
# default; both go through the experts' _apply_gate, which patch replaces.
@pytest.mark.parametrize(
    ("dtype", "experts"), [(torch.float64, "batched_mm"), (torch.float32, None)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_patched_model_matches_transformers(family, dtype, experts, fused_calls, monkeypatch):
    model = _tiny_model(family, dtype, experts)
    _, _, module_class, activation = FAMILIES[family]
    generator = torch.Generator().manual_seed(_seed(family, "inputs", str(dtype)))
    ids = torch.randint(0, VOCAB, (2, 13), generator=generator)
    cotangent = torch.randn(2, 13, VOCAB, generator=generator, dtype=torch.float64).to(dtype)

    logits_hf, grads_hf = _logits_and_grads(model, ids, cotangent)
    assert not fused_calls
    assert len(grads_hf) == len(list(model.parameters()))

    patched = glu_hf.patch(model)
    found = [m for m in model.modules() if glu_hf.is_patched(m)]
    assert patched == TINY["num_hidden_layers"] == len(found)
    assert {type(m).__name__ for m in found} == {module_class}
    assert all(m._glu_fused[1] == activation for m in found)

    clamped_inputs = []
    if family == "gpt_oss":
        real = glu_fused.functional.clamped_swiglu

        def spy(x, *args, **kwargs):
            clamped_inputs.append(x.detach().abs().max().item())
            return real(x, *args, **kwargs)

        monkeypatch.setattr(glu_fused.functional, "clamped_swiglu", spy)

    logits, grads = _logits_and_grads(model, ids, cotangent)
    assert len(fused_calls) >= patched, "the patched model must run the fused ops"
    if family == "gpt_oss":
        assert max(clamped_inputs) > 2 * model.config.swiglu_limit, "the clamp went unexercised"
    _assert_all_close(logits, logits_hf, dtype, f"{family} logits")
    assert grads.keys() == grads_hf.keys()
    for name, grad in grads.items():
        _assert_all_close(grad, grads_hf[name], dtype, f"{family} gradient of {name}")

    assert glu_hf.unpatch(model) == patched
    assert not any(glu_hf.is_patched(m) for m in model.modules())
    calls_before = len(fused_calls)
    logits_again, _ = _logits_and_grads(model, ids, cotangent)
    assert len(fused_calls) == calls_before, "unpatch must restore transformers' code"
    assert torch.equal(logits_again, logits_hf)


def test_gpt_oss_eager_experts_run_the_fused_op_with_the_bias(fused_calls, monkeypatch):
    """gpt-oss's eager experts loop runs the fused op with each expert's gate_up bias as its
    bias= (random biases: transformers' init zeroes them), with transformers' logits and
    gradients, the biases' included; unpatched, transformers' own loop again."""
    model = _tiny_model("gpt_oss", torch.float64, "eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj_bias.normal_(0.0, 2.0)
    generator = torch.Generator().manual_seed(_seed("eager"))
    ids = torch.randint(0, VOCAB, (2, 9), generator=generator)
    cotangent = torch.randn(2, 9, VOCAB, generator=generator, dtype=torch.float64)
    logits_hf, grads_hf = _logits_and_grads(model, ids, cotangent)
    glu_hf.patch(model)
    biases = []
    real = glu_fused.functional.clamped_swiglu

    def spy(*args, **kwargs):
        biases.append(kwargs.get("bias"))
        return real(*args, **kwargs)

    monkeypatch.setattr(glu_fused.functional, "clamped_swiglu", spy)
    logits, grads = _logits_and_grads(model, ids, cotangent)
    assert fused_calls and biases and all(b is not None for b in biases)
    _assert_all_close(logits, logits_hf, torch.float64, "gpt-oss eager experts")
    assert grads.keys() == grads_hf.keys()
    assert any(name.endswith("gate_up_proj_bias") for name in grads)
    for name, grad in grads.items():
        _assert_all_close(grad, grads_hf[name], torch.float64, f"gradient of {name}")
    glu_hf.unpatch(model)
    biases.clear()
    assert torch.equal(_logits_and_grads(model, ids, cotangent)[0], logits_hf) and not biases


@pytest.mark.parametrize("family", ["llama", "gpt_oss"])
def test_patched_modules_compile_without_graph_breaks(family, fused_calls):
    """torch.compile(fullgraph=True) through a patched module, forward and backward
    (aot_eager: dynamo and AOTAutograd trace it, with no slow code generation)."""
    model = _tiny_model(family, torch.float32, experts="batched_mm")
    glu_hf.patch(model)
    layer = model.model.layers[0].mlp
    module = layer if family == "llama" else layer.experts
    x = torch.randn(5, TINY["hidden_size"], requires_grad=True)
    if family == "llama":
        args = (x,)
    else:
        args = (x, torch.tensor([[0, 2]] * 5), torch.full((5, 2), 0.5))
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out = compiled(*args)
    assert fused_calls, "the compiled graph must hold the fused op"
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    want = module(*args)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    _assert_all_close(out, want, torch.float32, "compiled output")
    _assert_all_close(grad, want_grad, torch.float32, "compiled gradient")


def test_patch_twice_and_unpatch_twice():
    model = _tiny_model("llama", torch.float32)
    assert glu_hf.patch(model) == 2
    assert glu_hf.patch(model) == 0
    assert glu_hf.unpatch(model) == 2
    assert glu_hf.unpatch(model) == 0
    assert "forward" not in vars(model.model.layers[0].mlp)


def test_a_model_without_a_glu_mlp_is_refused():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no GLU MLP"):
        glu_hf.patch(model)
    with pytest.raises(ValueError, match="Sequential has no GLU MLP"):
        glu_hf.patch(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_an_unsupported_activation_is_refused_before_anything_changes():
    config = transformers.LlamaConfig(**{**TINY, "hidden_act": "relu2"})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"cannot patch model\.layers\.0\.mlp \(LlamaMLP\)"):
        glu_hf.patch(model)
    assert not any(glu_hf.is_patched(m) for m in model.modules())


def test_a_method_replaced_by_someone_else_is_not_overwritten():
    model = _tiny_model("llama", torch.float32)
    mlp = model.model.layers[1].mlp
    mlp.forward = mlp.forward  # as accelerate's hooks do
    with pytest.raises(RuntimeError, match=r"model\.layers\.1\.mlp .* already has its own"):
        glu_hf.patch(model)
    assert not any(glu_hf.is_patched(m) for m in model.modules())


class _LoraLinear(torch.nn.Module):
    """What peft puts in place of a projection: not an nn.Linear, base(x) + B(A(x))."""

    def __init__(self, base: torch.nn.Linear, rank: int = 4):
        super().__init__()
        self.base = base
        factory = {"dtype": base.weight.dtype}
        self.lora_a = torch.nn.Linear(base.in_features, rank, bias=False, **factory)
        self.lora_b = torch.nn.Linear(rank, base.out_features, bias=False, **factory)

    def forward(self, x):
        return self.base(x) + self.lora_b(self.lora_a(x))


def test_lora_wrapped_projections_are_patched_and_trained():
    model = _tiny_model("qwen3", torch.float64)
    for layer in model.model.layers:
        layer.mlp.gate_proj = _LoraLinear(layer.mlp.gate_proj)
        layer.mlp.up_proj = _LoraLinear(layer.mlp.up_proj)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(_seed("lora")))
    cotangent = torch.randn(2, 7, VOCAB, dtype=torch.float64)
    logits_hf, grads_hf = _logits_and_grads(model, ids, cotangent)
    assert glu_hf.patch(model) == 2
    logits, grads = _logits_and_grads(model, ids, cotangent)
    _assert_all_close(logits, logits_hf, torch.float64, "LoRA logits")
    for name in [n for n in grads_hf if "lora_" in n]:
        _assert_all_close(grads[name], grads_hf[name], torch.float64, f"gradient of {name}")


@pytest.mark.parametrize("family", ["llama-bias-gelu", "gemma"])
def test_gated_mlp_from_a_transformers_mlp(family):
    """GatedMLP.from_mlp on transformers' module (activation read off act_fn), and
    load_state_dict of a model's unfused MLP keys."""
    model = _tiny_model(family, torch.float64)
    hf_mlp = model.model.layers[0].mlp
    x = torch.randn(3, 5, TINY["hidden_size"], dtype=torch.float64)
    want = hf_mlp(x)
    for layout in ("halves", "interleaved"):
        fused = GatedMLP.from_mlp(hf_mlp, layout=layout)
        assert fused.activation == FAMILIES[family][3]
        _assert_all_close(fused(x), want, torch.float64, f"from_mlp, {layout}")
        loaded = GatedMLP(
            TINY["hidden_size"],
            TINY["intermediate_size"],
            activation=fused.activation,
            bias=fused.gate_up.bias is not None,
            dtype=torch.float64,
            layout=layout,
        )
        prefix = "model.layers.0.mlp."
        loaded.load_state_dict(
            {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        )
        _assert_all_close(loaded(x), want, torch.float64, f"load_state_dict, {layout}")


def test_import_glu_fused_does_not_import_transformers():
    code = "import sys, glu_fused, glu_fused.integrations; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- meta-device models and pickling (issue 28) ---------------------------------------------

FLOWS = ["llama", "gemma", "gpt_oss", "qwen3_moe"]


def _materialized_like(family: str, reference: torch.nn.Module) -> torch.nn.Module:
    """The family's model built under torch.device("meta") and patched there, as
    from_pretrained and accelerate's init_empty_weights build it, then materialized on the
    CPU (to_empty) and given the reference's weights and buffers."""
    config_name, overrides, _, _ = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**TINY, **overrides})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        assert glu_hf.patch(model) > 0
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    for name, buffer in reference.named_buffers():  # rotary frequencies: not in state_dict
        model.get_buffer(name).copy_(buffer)
    return model


@pytest.mark.parametrize("family", FLOWS)
def test_a_model_patched_on_the_meta_device_runs_fused_once_materialized(family, fused_calls):
    reference = _tiny_model(family, torch.float32)
    model = _materialized_like(family, reference)
    glu_hf.patch(reference)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(_seed(family)))
    fused_calls.clear()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert fused_calls, "the materialized model did not run the fused op"
    with torch.no_grad():
        assert torch.equal(got, reference(input_ids=ids).logits)


def test_infer_activation_under_a_meta_device_probes_on_the_cpu():
    with torch.device("meta"):
        assert glu_fused.nn.infer_activation(torch.nn.SiLU()) == "silu"
        with pytest.raises(ValueError, match="none of"):
            glu_fused.nn.infer_activation(torch.nn.ReLU6())


@pytest.mark.parametrize("family", FLOWS)
def test_a_patched_model_pickles_and_stays_patched(family, fused_calls):
    import copy
    import io
    import pickle

    model = _tiny_model(family, torch.float32)
    patched = glu_hf.patch(model)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(_seed(family)))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = {
        "torch.save": torch.load(buffer, weights_only=False),
        "pickle": pickle.loads(pickle.dumps(model)),
        "deepcopy": copy.deepcopy(model),
    }
    for how, other in copies.items():
        fused_calls.clear()
        with torch.no_grad():
            got = other(input_ids=ids).logits
        assert fused_calls, f"{how}: the copy does not run the fused op"
        assert torch.equal(got, want), how
        assert glu_hf.unpatch(other) == patched, how
        fused_calls.clear()
        with torch.no_grad():
            other(input_ids=ids)
        assert not fused_calls, f"{how}: unpatch after the round trip left the fused op"
        assert not any(glu_hf.is_patched(m) for m in other.modules()), how
