"""GatedMLP's lean block: the same results and gradients as the modules' own path and the
float64 reference, x + 2I elements kept per token (x with recompute), no activation-sized
buffer allocated by its backward beyond dh, a second backward that is still right; and the
in-place backward op under it, on every backend.

The in-place op: one item per backend and activation, looping over dtype x buffer kind x
placement, in full where the kernels run natively, and in Triton's interpreter a covering
design (those three in full, the activation varied); each case also through the in-place op
that sums the projections' biases' gradients (gated_backward_in_place_bias, which the block
calls where a bias needs its gradient): its buffers bit for bit the plain op's, its sums
against the float64 reference's; on the CPU their bits are the contract's order of
summation (tiles of 64 rows in row order, then the tiles in order). Its errors, empty
inputs and opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from conftest import (
    ACTIVATIONS,
    DTYPES,
    LAYOUTS,
    assert_matches,
    backend_params,
    check_bias_grad,
    combinations,
    device_of,
    random_input,
)
from covering import each, select
from torch.utils._python_dispatch import TorchDispatchMode

import glu_fused
from glu_fused import _derivatives, _gated_mlp, reference
from glu_fused.nn import GatedMLP

IN, HIDDEN, OUT, TOKENS = 12, 20, 9, 7
RECOMPUTE = [None, "projection"]


def _pair(activation, layout, recompute, bias=True, dtype=torch.float64, device="cpu"):
    """A lean GatedMLP and a plain one (lean=False) with the same weights."""
    lean = GatedMLP(
        IN, HIDDEN, OUT, activation, bias, device, dtype, layout=layout, recompute=recompute
    )
    plain = GatedMLP(IN, HIDDEN, OUT, activation, bias, device, dtype, layout=layout, lean=False)
    plain.load_state_dict(lean.state_dict())
    return lean, plain


def _run(mlp, x, cotangent):
    """The output and every gradient: x's, then the parameters'."""
    x = x.detach().requires_grad_()
    out = mlp(x)
    out.backward(cotangent)
    return out.detach(), [x.grad, *(p.grad for p in mlp.parameters())]


@pytest.mark.parametrize("recompute", RECOMPUTE)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", backend_params())
def test_lean_block_is_the_plain_path(backend, activation, layout, recompute):
    """float64: the lean block and the modules' own path agree to rounding, gradients too."""
    device = device_of(backend)
    lean, plain = _pair(activation, layout, recompute, device=device)
    x = random_input((3, TOKENS, IN), torch.float64, device)
    cotangent = random_input((3, TOKENS, OUT), torch.float64, device)
    with glu_fused.use_backend(backend):
        got = _run(lean, x, cotangent)
        want = _run(plain, x, cotangent)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_lean_block_in_low_precision(backend, layout, dtype):
    """The activation's output and the projection's gradient, as the block's backward leaves
    them in its buffers, against the float64 reference of the same inputs."""
    device = device_of(backend)
    lean, _ = _pair("silu", layout, None, dtype=dtype, device=device)
    x = random_input((TOKENS, IN), dtype, device)
    seen = {}

    def spy(dh, gate, up, activation, bias_grad, real=_gated_mlp._in_place):
        seen["inputs"] = (dh.clone(), gate.clone(), up.clone())
        seen["sums"] = real(dh, gate, up, activation, bias_grad)
        seen["outputs"] = (dh, gate, up)
        return seen["sums"]

    cotangent = random_input((TOKENS, OUT), dtype, device)
    with glu_fused.use_backend(backend), pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gated_mlp, "_in_place", spy)
        _, grads = _run(lean, x, cotangent)
    dh, gate, up = (t.double().requires_grad_() for t in seen["inputs"])
    h64 = reference.gated(gate, up, "silu")
    d_gate64, d_up64 = torch.autograd.grad(h64, (gate, up), dh)
    for got, want, what in zip(seen["outputs"], (h64, d_gate64, d_up64), ("h", "dgate", "dup")):
        assert_matches(got, want.detach(), dtype, what)
    # The bias's gradient is the pass's sums, in the fused projection's layout.
    d_gate_bias, d_up_bias = seen["sums"]
    check_bias_grad(d_gate_bias, d_gate64.sum(0), d_gate64, dtype, "gate bias")
    check_bias_grad(d_up_bias, d_up64.sum(0), d_up64, dtype, "up bias")
    bias_grad = grads[1 + [n for n, _ in lean.named_parameters()].index("gate_up.bias")]
    assert torch.equal(bias_grad, _gated_mlp.Block("silu", layout).join(d_gate_bias, d_up_bias))


def _saved_elements_per_token(mlp, x) -> float:
    """Elements of the activations autograd keeps (parameters left out), per token."""
    params = {p.untyped_storage().data_ptr() for p in mlp.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x)
    return sum(storages.values()) / (x.numel() // x.shape[-1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kept_for_backward(layout):
    x = random_input((5, TOKENS, IN), torch.float32).requires_grad_()
    lean, plain = _pair("silu", layout, None, bias=False, dtype=torch.float32)
    recomputing, _ = _pair("silu", layout, "projection", bias=False, dtype=torch.float32)
    assert _saved_elements_per_token(lean, x) == IN + 2 * HIDDEN
    assert _saved_elements_per_token(recomputing, x) == IN
    assert _saved_elements_per_token(plain, x) == IN + 3 * HIDDEN
    with torch.no_grad():
        assert _saved_elements_per_token(lean, x) == 0
        assert not _gated_mlp.applies((lean.gate_up, lean.down), x)


class _Allocations(TorchDispatchMode):
    """The shapes of the new tensors (not views of an argument) that the ops run inside it
    return."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize(("lean", "recompute"), [(True, None), (True, "projection"), (False, None)])
def test_backward_allocates_no_activation_beyond_dh(lean, recompute):
    """Activation-sized tensors that backward allocates: the lean block's, dh alone (and the
    projection again with recompute); the plain path's, dh and the projection's gradient."""
    mlp = GatedMLP(IN, HIDDEN, OUT, lean=lean, recompute=recompute)
    out = mlp(random_input((TOKENS, IN), torch.float32).requires_grad_())
    with _Allocations() as seen:
        out.backward(torch.ones_like(out))
    activations = [s for s in seen.shapes if s[0] == TOKENS and s[-1] in (HIDDEN, 2 * HIDDEN)]
    if not lean:
        assert sorted(activations) == [(TOKENS, HIDDEN), (TOKENS, 2 * HIDDEN)]
    elif recompute:
        assert sorted(activations) == [(TOKENS, HIDDEN), (TOKENS, 2 * HIDDEN)]
    else:
        assert activations == [(TOKENS, HIDDEN)]


@pytest.mark.parametrize("recompute", RECOMPUTE)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_and_gradgradcheck_of_the_block(layout, recompute):
    lean, _ = _pair("gelu", layout, recompute)
    x = random_input((4, IN), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lean, (x,))
    assert torch.autograd.gradgradcheck(lean, (x,))


def test_a_second_backward_through_the_same_graph_is_right():
    """The first backward wrote over what forward kept; the second recomputes it."""
    lean, _ = _pair("silu", "halves", None)
    x = random_input((TOKENS, IN), torch.float64).requires_grad_()
    out = lean(x)
    inputs = [x, *lean.parameters()]
    first = torch.autograd.grad(out, inputs, torch.ones_like(out), retain_graph=True)
    second = torch.autograd.grad(out, inputs, torch.ones_like(out))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_compiles_fullgraph():
    torch._dynamo.reset()
    lean, plain = _pair("gelu_tanh", "interleaved", None)
    x = random_input((TOKENS, IN), torch.float64)
    cotangent = random_input((TOKENS, OUT), torch.float64)
    got = _run(torch.compile(lean, fullgraph=True), x, cotangent)
    want = _run(plain, x, cotangent)
    for g, w in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_bad_input_is_refused_with_a_clear_error():
    mlp = GatedMLP(IN, HIDDEN)
    with pytest.raises(ValueError, match="inputs of 12 features"):
        mlp(torch.randn(3, IN + 1))
    with pytest.raises(ValueError, match="weights' dtype, torch.float32; got torch.float64"):
        mlp(torch.randn(3, IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights' device, cpu; got meta"):
        mlp(torch.randn(3, IN, device="meta"))
    with pytest.raises(ValueError, match="unknown recompute 'all'"):
        GatedMLP(IN, HIDDEN, recompute="all")


def test_hooked_or_autocast_modules_take_their_own_path():
    mlp = GatedMLP(IN, HIDDEN)
    x = torch.randn(3, IN, requires_grad=True)
    assert _gated_mlp.applies((mlp.gate_up, mlp.down), x)
    handle = mlp.down.register_forward_hook(lambda *args: None)
    assert not _gated_mlp.applies((mlp.gate_up, mlp.down), x)
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _gated_mlp.applies((mlp.gate_up, mlp.down), x)
        assert mlp(x).dtype == torch.bfloat16


# ---- the in-place backward op --------------------------------------------------------------


def _placed(shape, dtype, device, offset):
    """A contiguous random tensor starting `offset` elements into a buffer of its own."""
    numel = shape[0] * shape[1]
    return random_input((numel + offset,), dtype, device)[offset:].view(shape)


# (hidden size, elements each buffer starts off its allocation): aligned rows, and rows of
# an odd length starting off 16-byte boundaries (the CUDA kernels' phased and scalar paths).
PLACEMENTS = {"aligned": (HIDDEN, 0), "odd, offset": (HIDDEN + 3, 1)}


def _buffers(shape_kind, dtype, device, placement="aligned"):
    """(dh, gate, up) in one of the layouts the lean block hands the op."""
    hidden, offset = PLACEMENTS[placement]
    dh = _placed((TOKENS, hidden), dtype, device, offset)
    if shape_kind == "two projections":
        return (
            dh,
            _placed((TOKENS, hidden), dtype, device, offset + 1),
            _placed((TOKENS, hidden), dtype, device, offset + 2),
        )
    gate_up = _placed((TOKENS, 2 * hidden), dtype, device, offset)
    return (dh, *reference.split(gate_up, 1, shape_kind == "interleaved"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", backend_params())
def test_in_place_op_matches_the_reference(backend, activation):
    """dtype x buffer kind x placement: in full where the kernels run natively; in Triton's
    interpreter a covering design, the three crossed in full with the activation varied."""
    params = {
        "activation": ACTIVATIONS,
        "dtype": DTYPES,
        "kind": ["two projections", "halves", "interleaved"],
        "placement": list(PLACEMENTS),
    }
    rows = combinations(backend, params, full=[("dtype", "kind", "placement")])
    each(select(rows, activation=activation), lambda **r: _in_place_op(backend, activation, **r))


def _in_place_op(backend, activation, dtype, kind, placement):
    dh, gate, up = _buffers(kind, dtype, device_of(backend), placement)
    summed = _copies((dh, gate, up))
    g64, u64 = (t.detach().double().requires_grad_() for t in (gate, up))
    h64 = reference.gated(g64, u64, activation)
    d_gate64, d_up64 = torch.autograd.grad(h64, (g64, u64), dh.double())
    with glu_fused.use_backend(backend):
        route = glu_fused.backends.route(dh.device.type)
        route.gated_backward_in_place(dh, gate, up, activation)
        sums = route.gated_backward_in_place(*summed, activation, bias_grad=True)
    assert_matches(dh, h64.detach(), dtype, "h over dh")
    assert_matches(gate, d_gate64, dtype, "dgate over gate")
    assert_matches(up, d_up64, dtype, "dup over up")
    what = f"{dtype} {kind} {placement}"
    for got, want, name in zip(summed, (dh, gate, up), ("h", "dgate", "dup")):
        assert torch.equal(got, want), f"{what}: {name}, summing the bias gradient"
    check_bias_grad(sums[0], d_gate64.sum(0), d_gate64, dtype, f"{what}: gate bias")
    check_bias_grad(sums[1], d_up64.sum(0), d_up64, dtype, f"{what}: up bias")


def _copies(tensors):
    """Copies of tensors in the same layouts, at the same places in storages of their own:
    each storage cloned once, so that views of one buffer stay views of one buffer."""
    storages = {}
    copies = []
    for t in tensors:
        storage = t.untyped_storage()
        clone = storages.setdefault(storage.data_ptr(), storage.clone())
        copy = torch.empty(0, dtype=t.dtype, device=t.device)
        copies.append(copy.set_(clone, t.storage_offset(), t.shape, t.stride()))
    return copies


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
def test_in_place_bias_gradient_is_summed_in_tiles_of_rows_in_order(backend):
    """float32 (the gradients stored are the ones summed): each bias gradient is, bit for
    bit, the float32 sum of tiles of 64 rows, each summed from its first row to its last,
    then of the tiles in order, as the contract fixes it (on the CPU, natively and in the
    CUDA kernels' emulation: a GPU sums the tiles by a reduction of its own)."""
    rows, hidden = 64 * 3 + 5, HIDDEN
    gate_up = random_input((rows, 2 * hidden), torch.float32)
    dh = random_input((rows, hidden), torch.float32)
    gate, up = reference.split(gate_up, 1, False)
    with glu_fused.use_backend(backend):
        route = glu_fused.backends.route("cpu")
        sums = route.gated_backward_in_place(dh, gate, up, "silu", bias_grad=True)
    for grad, got, what in zip((gate, up), sums, ("gate", "up")):
        want = torch.zeros(hidden)
        for tile in grad.split(64):
            partial = torch.zeros(hidden)
            for row in tile:
                partial = partial + row
            want = want + partial
        assert torch.equal(got, want), what


def test_reference_in_place_is_autograd_of_the_reference():
    dh, gate, up = _buffers("two projections", torch.float64, "cpu")
    g64, u64 = (t.detach().clone().requires_grad_() for t in (gate, up))
    h64 = reference.gated(g64, u64, "gelu")
    d_gate64, d_up64 = torch.autograd.grad(h64, (g64, u64), dh)
    _derivatives.gated_backward_in_place(dh, gate, up, "gelu")
    for got, want in ((dh, h64), (gate, d_gate64), (up, d_up64)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("summing", [False, True], ids=["plain", "bias gradient"])
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_in_place_op_refuses_what_it_cannot_write_in_place(backend, summing):
    from glu_fused import _ops

    ops = _ops.GATED[glu_fused.backends.BACKENDS[backend].family]
    op = ops.backward_in_place_bias if summing else ops.backward_in_place
    device = device_of(backend)
    dh, gate, up = _buffers("two projections", torch.float32, device)
    with pytest.raises(ValueError, match="grad_out, which must be contiguous"):
        op(dh.t().contiguous().t(), gate, up, "silu")
    with pytest.raises(ValueError, match="read where they are"):
        op(dh, gate.t().contiguous().t(), up.t().contiguous().t(), "silu")
    with pytest.raises(RuntimeError, match="single memory location"):
        op(dh, dh, up, "silu")
    with pytest.raises(RuntimeError, match="not differentiable"):
        op(dh, gate.requires_grad_(), up, "silu")
    versions = [t._version for t in (dh, up)]
    op(dh, gate.detach(), up, "silu")
    assert [t._version for t in (dh, up)] == [v + 1 for v in versions]
    if summing:
        scalars = [random_input((), torch.float32, device) for _ in range(3)]
        with pytest.raises(ValueError, match="at least one dim"):
            op(*scalars, "silu")
        empty = [torch.empty(0, 5, device=device) for _ in range(3)]
        for grad in op(*empty, "silu"):
            assert torch.equal(grad, torch.zeros(5, device=device))
        utils = (
            "test_schema",
            "test_autograd_registration",
            "test_faketensor",
            "test_aot_dispatch_dynamic",
        )
        args = (*_buffers("two projections", torch.float32, device), "gelu")
        torch.library.opcheck(op, args, test_utils=utils)


# ---- the kept projections, through the saved-tensor hooks --------------------------------


def _two_projection_block(activation="silu", dtype=torch.float64):
    """The lean block over two projections (a Hugging Face MLP's gate_proj and up_proj, as the
    transformers integration hands them), as a function of x, with its weights."""
    gate, up, down = (random_input(s, dtype) for s in ((HIDDEN, IN), (HIDDEN, IN), (OUT, HIDDEN)))
    weights = [w.requires_grad_() for w in (down, gate, up)]
    block = _gated_mlp.Block(activation, layout=None)

    def run(x):
        return _gated_mlp.LeanGatedMLP.apply(block, x, down, None, gate, up, None, None)

    def plain(x):
        return F.linear(reference.gated(F.linear(x, gate), F.linear(x, up), activation), down)

    return run, plain, weights


@pytest.mark.parametrize("kind", ["halves", "interleaved", "two projections"])
def test_saved_tensors_hooks_see_the_projections(kind):
    """The projections are not in save_for_backward, but the pack hook in effect still sees
    them (and x), and backward unpacks each once: hooks that offload or compress what autograd
    keeps get them too."""
    if kind == "two projections":
        run, _, weights = _two_projection_block()
        projections = [(TOKENS, HIDDEN), (TOKENS, HIDDEN)]
    else:
        lean, _ = _pair("silu", kind, None, bias=False)
        run, weights = lean, list(lean.parameters())
        projections = [(TOKENS, 2 * HIDDEN)]
    x = random_input((TOKENS, IN), torch.float64).requires_grad_()
    packed, unpacked = [], []

    def pack(t):
        packed.append(tuple(t.shape))
        return ("packed", t)

    def unpack(p):
        unpacked.append(tuple(p[1].shape))
        return p[1]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = run(x)
    weight_shapes = {tuple(w.shape) for w in weights}
    activations = [s for s in packed if s not in weight_shapes]
    assert sorted(activations) == sorted([(TOKENS, IN), *projections])
    out.backward(torch.ones_like(out))
    assert sorted(s for s in unpacked if s not in weight_shapes) == sorted(activations)


@pytest.mark.parametrize("kind", ["halves", "two projections"])
@pytest.mark.parametrize("keep", ["save_on_cpu", "checkpoint", "saved_tensors_hooks"])
def test_gradients_through_the_saved_tensor_hooks(keep, kind):
    """save_on_cpu, a non-reentrant checkpoint (which packs through its own hooks and
    recomputes the forward at the first unpack) and a copying pack hook: the same gradients as
    the block without them, then as the unfused math."""
    if kind == "two projections":
        run, plain, weights = _two_projection_block()
    else:
        lean, other = _pair("silu", kind, None)
        run, plain, weights = lean, other, list(lean.parameters())
        weights_plain = list(other.parameters())
    x = random_input((3, TOKENS, IN), torch.float64)
    cotangent = random_input((3, TOKENS, OUT), torch.float64)

    def grads(fn, params, keep=None):
        xg = x.detach().requires_grad_()
        if keep == "checkpoint":
            out = torch.utils.checkpoint.checkpoint(fn, xg, use_reentrant=False)
        elif keep == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                out = fn(xg)
        elif keep == "saved_tensors_hooks":
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                out = fn(xg)
        else:
            out = fn(xg)
        return torch.autograd.grad(out, [xg, *params], cotangent)

    got = grads(run, weights, keep)
    bare = grads(run, weights)
    want = grads(plain, weights if kind == "two projections" else weights_plain)
    for g, b, w in zip(got, bare, want):
        assert torch.equal(g, b)
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_the_order_of_the_weight_gradients_is_the_lower_peak():
    """_down_first: the down projection's weight gradient last while the tokens' activations
    are smaller than the weights, first beyond (h freed before the projections' gradients)."""
    need = (False, True, True, False, True, False)
    weights = [torch.empty(2 * 176, 64)]

    def first(tokens):
        dy2, x2 = torch.empty(tokens, 64), torch.empty(tokens, 64)
        h, d_proj = torch.empty(tokens, 176), [torch.empty(tokens, 2 * 176)]
        return _gated_mlp._down_first(need, dy2, x2, weights, h, d_proj)

    assert not first(16) and not first(64)
    assert first(4096)


def test_a_second_backward_after_unpacking_through_hooks_is_right():
    """The first backward unpacked the projections and dropped them; a second one through the
    same graph (two projections, under save_on_cpu) recomputes them: the same gradients."""
    run, _, weights = _two_projection_block()
    x = random_input((TOKENS, IN), torch.float64).requires_grad_()
    with torch.autograd.graph.save_on_cpu():
        out = run(x)
    first = torch.autograd.grad(out, [x, *weights], torch.ones_like(out), retain_graph=True)
    second = torch.autograd.grad(out, [x, *weights], torch.ones_like(out))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
