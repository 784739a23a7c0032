"""GatedMLP in LLaMA's shape: built from (and loaded from) separate gate_proj / up_proj /
down_proj weights, initialised like LLaMA's linear layers, and split for tensor parallelism
in either layout."""

from __future__ import annotations

import copy
import math
import pickle
import zlib

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES, backend_params, device_of
from torch import nn

import glu_fused
from glu_fused import _table, reference
from glu_fused.nn import GatedMLP, infer_activation

IN, HIDDEN, OUT = 24, 40, 16
LAYOUTS = ("halves", "interleaved")

# act(gate) for each activation name, as the unfused MLP of a model computes it.
TORCH_ACTIVATIONS = {name: a.torch_form for name, a in _table.GATE_ACTIVATIONS.items()}


class UnfusedMLP(nn.Module):
    """transformers' LlamaMLP, verbatim in structure: down(act(gate(x)) * up(x))."""

    def __init__(self, act_fn, bias=False, dtype=torch.float64, device="cpu", out=OUT):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.gate_proj = nn.Linear(IN, HIDDEN, bias=bias, **factory)
        self.up_proj = nn.Linear(IN, HIDDEN, bias=bias, **factory)
        self.down_proj = nn.Linear(HIDDEN, out, bias=bias, **factory)
        self.act_fn = act_fn
        # Wider than nn.Linear's init, so that the gates reach the activations' bends.
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(4.0)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _seeded(*key) -> None:
    """A seed of its own for each test case, the same from run to run."""
    torch.manual_seed(zlib.crc32(repr(key).encode()))


def _assert_close(got, want, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _unfused_grads_of(fused: GatedMLP) -> dict[str, torch.Tensor]:
    """The fused module's parameter gradients under the unfused module's names."""
    interleaved = fused.layout == "interleaved"
    grads = {}
    grads["gate_proj.weight"], grads["up_proj.weight"] = reference.split(
        fused.gate_up.weight.grad, 0, interleaved
    )
    if fused.gate_up.bias is not None:
        grads["gate_proj.bias"], grads["up_proj.bias"] = reference.split(
            fused.gate_up.bias.grad, 0, interleaved
        )
        grads["down_proj.bias"] = fused.down.bias.grad
    grads["down_proj.weight"] = fused.down.weight.grad
    return grads


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", list(TORCH_ACTIVATIONS))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_from_mlp_computes_what_the_unfused_mlp_computes(backend, layout, activation, bias):
    """Output, input gradient and every parameter gradient, float64, to the spec's bound."""
    device = device_of(backend)
    _seeded(layout, activation, bias)
    unfused = UnfusedMLP(TORCH_ACTIVATIONS[activation], bias=bias, device=device)
    fused = GatedMLP.from_mlp(unfused, layout=layout)
    assert fused.activation == activation and fused.layout == layout
    x = torch.randn(3, 7, IN, dtype=torch.float64, device=device)
    cotangent = torch.randn(3, 7, OUT, dtype=torch.float64, device=device)

    x_unfused = x.clone().requires_grad_()
    unfused(x_unfused).backward(cotangent)
    x_fused = x.clone().requires_grad_()
    with glu_fused.use_backend(backend):
        out = fused(x_fused)
        out.backward(cotangent)

    _assert_close(out, unfused(x), torch.float64, "output")
    _assert_close(x_fused.grad, x_unfused.grad, torch.float64, "input gradient")
    unfused_grads = {name: p.grad for name, p in unfused.named_parameters()}
    fused_grads = _unfused_grads_of(fused)
    assert fused_grads.keys() == unfused_grads.keys()
    for name, grad in fused_grads.items():
        _assert_close(grad, unfused_grads[name], torch.float64, f"{name} gradient")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_against_the_unfused_mlp_in_float64(layout):
    _seeded("float32", layout)
    unfused = UnfusedMLP(nn.SiLU(), bias=True, dtype=torch.float32)
    fused = GatedMLP.from_mlp(unfused, layout=layout)
    assert fused.gate_up.weight.dtype == torch.float32
    x = torch.randn(5, IN)
    unfused64 = copy.deepcopy(unfused).double()
    _assert_close(fused(x).double(), unfused64(x.double()), torch.float32, "float32 output")


def test_from_mlp_copies_and_keeps_dtype_and_device():
    _seeded("copies")
    unfused = UnfusedMLP(nn.SiLU(), dtype=torch.bfloat16)
    fused = GatedMLP.from_mlp(unfused)
    weight = fused.gate_up.weight
    assert weight.dtype == torch.bfloat16 and weight.device == unfused.gate_proj.weight.device
    assert torch.equal(weight, torch.cat([unfused.gate_proj.weight, unfused.up_proj.weight]))
    assert torch.equal(fused.down.weight, unfused.down_proj.weight)
    before = fused.gate_up.weight.clone()
    with torch.no_grad():
        unfused.gate_proj.weight.add_(1.0)
    assert torch.equal(fused.gate_up.weight, before), "from_mlp must copy, not alias"


def test_interleaved_layout_alternates_gate_and_up_rows():
    _seeded("interleaved rows")
    unfused = UnfusedMLP(nn.SiLU(), bias=True)
    fused = GatedMLP.from_mlp(unfused, layout="interleaved")
    assert torch.equal(fused.gate_up.weight[0::2], unfused.gate_proj.weight)
    assert torch.equal(fused.gate_up.weight[1::2], unfused.up_proj.weight)
    assert torch.equal(fused.gate_up.bias[1::2], unfused.up_proj.bias)


def test_from_mlp_activation_is_inferred_or_given():
    unfused = UnfusedMLP(nn.GELU(approximate="tanh"))
    assert GatedMLP.from_mlp(unfused).activation == "gelu_tanh"
    assert GatedMLP.from_mlp(unfused, "relu").activation == "relu"
    del unfused.act_fn
    assert GatedMLP.from_mlp(unfused).activation == "silu"


def _saved_elements(mlp: GatedMLP) -> int:
    """Elements autograd keeps for a forward of mlp (weights included)."""
    count = [0]

    def pack(t):
        count[0] += t.numel()
        return t

    x = torch.randn(4, IN, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x)
    return count[0]


def test_options_take_effect_however_they_are_set():
    """recompute, activation and layout set after construction act as if given to it."""
    unfused = UnfusedMLP(F.silu)
    mlp = GatedMLP.from_mlp(unfused)
    built = GatedMLP.from_mlp(unfused, recompute="projection", lean=True)
    assert built.recompute == "projection" and built.lean
    kept = _saved_elements(mlp)
    mlp.recompute = "projection"
    assert _saved_elements(mlp) == _saved_elements(built) < kept, "recompute set later ignored"
    mlp.activation = "gelu"
    x = torch.randn(5, IN, dtype=torch.float64)
    expected = mlp.down(reference.gated(*mlp.gate_up(x).chunk(2, -1), "gelu"))
    torch.testing.assert_close(mlp(x), expected)
    with pytest.raises(ValueError, match="unknown recompute"):
        mlp.recompute = "everything"
    assert GatedMLP.from_mlp(unfused, lean=False).lean is False
    assert mlp.shard(0, 2).recompute == "projection"


def test_from_mlp_rejects_what_is_not_a_gated_mlp():
    with pytest.raises(TypeError, match="gate_proj, up_proj and down_proj"):
        GatedMLP.from_mlp(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4)))
    unfused = UnfusedMLP(nn.SiLU())
    unfused.up_proj = nn.Linear(IN, HIDDEN + 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="must both map"):
        GatedMLP.from_mlp(unfused)
    unfused = UnfusedMLP(nn.SiLU())
    unfused.down_proj = nn.Linear(HIDDEN, OUT, bias=True, dtype=torch.float64)
    with pytest.raises(ValueError, match="on some"):
        GatedMLP.from_mlp(unfused)
    with pytest.raises(ValueError, match="none of"):
        GatedMLP.from_mlp(UnfusedMLP(nn.Tanh()))


@pytest.mark.parametrize(
    ("act_fn", "name"),
    [
        (nn.SiLU(), "silu"),
        (F.silu, "silu"),
        (lambda t: t * torch.sigmoid(t), "silu"),
        (nn.GELU(), "gelu"),
        (nn.GELU(approximate="tanh"), "gelu_tanh"),
        (nn.ReLU(), "relu"),
        (torch.sigmoid, "sigmoid"),
    ],
)
def test_infer_activation_recognises_implementations(act_fn, name):
    assert infer_activation(act_fn) == name


@pytest.mark.parametrize(
    "act_fn",
    [
        nn.ReLU6(),  # relu below 6
        lambda t: t * torch.sigmoid(1.702 * t),  # quick GELU
        lambda t: F.gelu(t).clamp(-10, 10),  # GELU clipped at 10
        nn.Tanh(),
        nn.Linear(3, 3),  # cannot even be evaluated on the probe
    ],
    ids=["relu6", "quick_gelu", "gelu_10", "tanh", "linear"],
)
def test_infer_activation_rejects_near_misses(act_fn):
    with pytest.raises(ValueError, match="glu_fused: "):
        infer_activation(act_fn)


class _Block(nn.Module):
    """A parent, so that the keys carry a prefix as inside a model."""

    def __init__(self, mlp):
        super().__init__()
        self.norm = nn.LayerNorm(IN, dtype=torch.float64)
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(self.norm(x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_load_state_dict_fuses_a_llama_checkpoint(layout, bias):
    _seeded("checkpoint", layout, bias)
    unfused = _Block(UnfusedMLP(nn.SiLU(), bias=bias, out=IN))
    with torch.no_grad():
        unfused.norm.weight.normal_()
    checkpoint = unfused.state_dict()
    keys = list(checkpoint)
    fused = _Block(GatedMLP(IN, HIDDEN, bias=bias, dtype=torch.float64, layout=layout))
    result = fused.load_state_dict(checkpoint)  # strict: every key used, none missing
    assert not result.missing_keys and not result.unexpected_keys
    assert list(checkpoint) == keys, "the caller's state dict must be left alone"
    x = torch.randn(4, IN, dtype=torch.float64)
    _assert_close(fused(x), unfused(x), torch.float64, "loaded output")


def test_load_state_dict_reports_a_lone_projection():
    checkpoint = UnfusedMLP(nn.SiLU()).state_dict()
    del checkpoint["up_proj.weight"]
    fused = GatedMLP(IN, HIDDEN, OUT, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="gate_proj.weight"):
        fused.load_state_dict(checkpoint)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_state_dict_round_trips_and_module_copies(layout):
    _seeded("round trip", layout)
    mlp = GatedMLP(IN, HIDDEN, OUT, activation="gelu_tanh", bias=True, layout=layout)
    other = GatedMLP(IN, HIDDEN, OUT, activation="gelu_tanh", bias=True, layout=layout)
    other.load_state_dict(mlp.state_dict())
    x = torch.randn(2, IN)
    want = mlp(x)
    assert torch.equal(other(x), want)
    assert torch.equal(copy.deepcopy(mlp)(x), want)
    assert torch.equal(pickle.loads(pickle.dumps(mlp))(x), want)
    assert repr(mlp).startswith(f"GatedMLP(\n  activation='gelu_tanh', layout={layout!r}")


def test_init_is_llama_linear_init():
    """nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same for the fused gate_up as for
    separate gate_proj and up_proj of the same fan-in; reset_parameters(std) is HF's normal."""
    _seeded("init")
    in_features, hidden = 256, 512
    mlp = GatedMLP(in_features, hidden, bias=True)
    separate = nn.Linear(in_features, hidden)
    for fused, plain in (
        (mlp.projections()[0], separate.weight),
        (mlp.projections()[1], separate.weight),
        (mlp.projections()[3], separate.bias),
    ):
        bound = 1 / math.sqrt(in_features)
        assert fused.abs().max() <= bound and plain.abs().max() <= bound
        # Uniform on [-b, b]: std b / sqrt(3), here from 131072 or 512 samples.
        tolerance = 0.02 if fused.numel() > 10_000 else 0.15
        assert fused.std().item() == pytest.approx(bound / math.sqrt(3), rel=tolerance)
    down_bound = 1 / math.sqrt(hidden)
    assert mlp.down.weight.abs().max() <= down_bound
    assert mlp.down.weight.std().item() == pytest.approx(down_bound / math.sqrt(3), rel=0.02)

    mlp.reset_parameters(std=0.02)
    assert mlp.gate_up.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert mlp.down.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert not mlp.gate_up.bias.any() and not mlp.down.bias.any()
    mlp.reset_parameters()
    assert mlp.gate_up.weight.abs().max() <= 1 / math.sqrt(in_features)
    assert mlp.gate_up.bias.abs().min() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_tensor_parallel_shards_sum_to_the_full_output(layout, world_size, bias):
    _seeded("shards", layout, world_size, bias)
    mlp = GatedMLP(IN, HIDDEN, OUT, bias=bias, dtype=torch.float64, layout=layout)
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(4.0)
    x = torch.randn(6, IN, dtype=torch.float64)
    shards = [mlp.shard(rank, world_size) for rank in range(world_size)]
    assert all(s.hidden_features == HIDDEN // world_size for s in shards)
    _assert_close(sum(s(x) for s in shards), mlp(x), torch.float64, "sum of shards")
    if layout == "interleaved":
        # What ColwiseParallel's Shard(0) cuts: a contiguous block of gate_up's rows.
        blocks = mlp.gate_up.weight.chunk(world_size)
        assert all(torch.equal(s.gate_up.weight, b) for s, b in zip(shards, blocks))


def test_naive_column_shards_of_halves_break_the_pairing():
    """Why halves need per-shard halves: contiguous row blocks of a [gate | up] weight pair
    rank 0's gates with gates and rank 1's ups with ups."""
    _seeded("naive shards")
    mlp = GatedMLP(IN, HIDDEN, OUT, dtype=torch.float64, layout="halves")
    x = torch.randn(6, IN, dtype=torch.float64)
    naive = []
    for rank, (rows, cols) in enumerate(
        zip(mlp.gate_up.weight.chunk(2), mlp.down.weight.chunk(2, dim=1))
    ):
        local = mlp.shard(rank, 2)
        with torch.no_grad():
            local.gate_up.weight.copy_(rows)
            local.down.weight.copy_(cols)
        naive.append(local(x))
    assert (sum(naive) - mlp(x)).abs().max() > 1e-3


def test_gated_mlp_checks_its_layout():
    with pytest.raises(ValueError, match="unknown layout 'pairs'"):
        GatedMLP(IN, HIDDEN, layout="pairs")


def test_shard_rejects_an_uneven_split():
    mlp = GatedMLP(IN, HIDDEN, OUT)
    with pytest.raises(ValueError, match="shard 0 of 3"):
        mlp.shard(0, 3)
    with pytest.raises(ValueError, match="shard 2 of 2"):
        mlp.shard(2, 2)


@pytest.mark.parametrize("backend", backend_params())
def test_a_plain_gate_up_leaves_its_bias_to_the_kernel(backend, monkeypatch):
    """Outside the lean block (lean=False; no gradient; the FP8 forward) a plain gate_up's
    bias is not added by its GEMM but by the fused kernel (the activation's bias= or
    gate_bias=/value_bias=), with the unfused MLP's output and gradients; a gate_up with a
    hook keeps its own call (the hook sees the biased projection). Every activation, the
    layouts alternating, and the gated path (sigmoid) in both layouts; float64."""
    device = device_of(backend)
    biases = []

    def spy(f):
        def call(*args, **kwargs):
            biases.append(kwargs.get("bias", kwargs.get("gate_bias")))
            return f(*args, **kwargs)

        return call

    for name in ("swiglu", "geglu", "reglu", "gated"):
        monkeypatch.setattr(glu_fused.functional, name, spy(getattr(glu_fused.functional, name)))
    cases = [(a, LAYOUTS[i % 2]) for i, a in enumerate(TORCH_ACTIVATIONS)]
    for activation, layout in dict.fromkeys([*cases, ("sigmoid", "interleaved")]):
        what = f"{activation}, {layout}"
        _seeded("kernel bias", activation, layout)
        unfused = UnfusedMLP(TORCH_ACTIVATIONS[activation], bias=True, device=device)
        fused = GatedMLP.from_mlp(unfused, layout=layout)
        fused.lean = False
        x = torch.randn(3, 5, IN, dtype=torch.float64, device=device)
        cotangent = torch.randn(3, 5, OUT, dtype=torch.float64, device=device)
        x_unfused, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
        unfused(x_unfused).backward(cotangent)
        with glu_fused.use_backend(backend):
            biases.clear()
            out = fused(x_fused)
            assert len(biases) == 1 and biases[0] is not None, what
            out.backward(cotangent)
            with torch.no_grad():
                _assert_close(fused(x), out, torch.float64, f"{what}: no_grad output")
            assert biases[-1] is not None, what
            fused.fp8 = "token"
            with torch.no_grad():
                fp8_out = fused(x)
                assert biases[-1] is not None, what
                projection = fused.gate_up(x)
                unfused_fp8 = fused._block.down([projection], fused.down.weight, fused.down.bias)
            torch.testing.assert_close(fp8_out, unfused_fp8, rtol=0, atol=0)
            fused.fp8 = None
            handle = fused.gate_up.register_forward_hook(lambda m, i, o: biases.append("hook"))
            _assert_close(fused(x), out, torch.float64, f"{what}: hooked output")
            assert biases[-2:] == ["hook", None], what
            handle.remove()
        _assert_close(out, unfused(x), torch.float64, f"{what}: output")
        _assert_close(x_fused.grad, x_unfused.grad, torch.float64, f"{what}: input gradient")
        unfused_grads = {name: p.grad for name, p in unfused.named_parameters()}
        for name, grad in _unfused_grads_of(fused).items():
            _assert_close(grad, unfused_grads[name], torch.float64, f"{what}: {name} gradient")
