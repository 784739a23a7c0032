"""Bias and token counts (docs/contract.md, "Bias and token counts"), on every backend.

What runs, one pytest item per backend and kind, looping over its cases inside:
* bias, forward and backward: packed function x dtype x layout x shape (rows a multiple of
  the bias gradient's tile of 64 and not, strided rows), and gated activation x dtype x
  which bias (gate, value, both): the result and the gradients of the inputs and of the
  bias against the float64 reference's autograd (the bias gradient, summed in float32, in
  float32's tolerance for float64 inputs);
* token counts: x [E, T, 2H] with counts 0, partial and T, with and without a bias: the
  valid rows bit for bit what the same backend gives each expert's slice of them, the rows
  past the counts still the poison (not written; the reference gives zeros), the input
  gradient's rows past the counts zero and its valid rows bit for bit the slices';
* the bias gradient's bits: the same from run to run, and on 1 thread as on 2;
* FP8 with a bias and counts: (q, scale) of the valid rows bit for bit the rule applied to
  the plain result's valid rows;
* autograd in float64 (native ops and reference): gradcheck and gradgradcheck with a bias
  (contiguous and strided rows), gated with both biases, with counts; forward AD and vmap
  against the reference; torch.compile(fullgraph) with the op one node of the graph;
  opcheck of the ops with their new arguments;
* errors: the ops (C++) and the reference raise the same exception and message.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    DTYPES,
    FUNCTIONS,
    LAYOUTS,
    backend_params,
    check_bias_grad,
    combinations,
    device_of,
    fused,
    ops_of,
    random_input,
    ref,
)

import glu_fused
from glu_fused import _fp8, reference
from glu_fused.testing import assert_matches

BACKENDS = backend_params()
OP_BACKENDS = backend_params(("cpu", "cuda", "triton"))
# Rows: 3 x 70 (four tiles of 64 rows, the last short), 130 strided rows, and 5.
SHAPES = {"3x70": (3, 70, 48), "strided": (130, 16), "5": (5, 2)}


def _input(shape_name, dtype, device):
    shape = SHAPES[shape_name]
    if shape_name == "strided":  # rows of 16 taken from rows of 24: row stride 24
        return random_input((shape[0], shape[1] + 8), dtype, device)[:, 2 : 2 + shape[1]]
    return random_input(shape, dtype, device)


def _grads(out, inputs, upstream):
    return torch.autograd.grad(out, [t for t in inputs if t is not None], upstream)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_bias_matches_the_reference(backend):
    device = device_of(backend)
    params = {
        "function": range(len(FUNCTIONS)),
        "dtype": DTYPES,
        "layout": LAYOUTS,
        "shape": list(SHAPES),
    }
    with glu_fused.use_backend(backend):
        for row in combinations(backend, params):
            name, kw = FUNCTIONS[row["function"]]
            dtype, layout = row["dtype"], row["layout"]
            what = f"{backend} {name}{kw} {dtype} {layout} {row['shape']}"
            x = _input(row["shape"], dtype, device).requires_grad_()
            b = random_input((x.shape[-1],), dtype, device, scale=1.0).requires_grad_()
            out = fused(name)(x, layout=layout, bias=b, **kw)
            x64 = x.detach().double().requires_grad_()
            b64 = b.detach().double().requires_grad_()
            want = ref(name)(x64, layout=layout, bias=b64, **kw)
            assert_matches(out, want, dtype, what)
            upstream = random_input(out.shape, dtype, device)
            gx, gb = _grads(out, (x, b), upstream)
            wx, wb = _grads(want, (x64, b64), upstream.double())
            assert_matches(gx, wx, dtype, what + " grad x")
            check_bias_grad(gb, wb, wx, dtype, what + " grad bias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_bias_matches_the_reference(backend):
    device = device_of(backend)
    params = {
        "activation": ACTIVATIONS,
        "dtype": DTYPES,
        "bias": ["gate", "value", "both"],
        "shape": list(SHAPES),
    }
    with glu_fused.use_backend(backend):
        for row in combinations(backend, params):
            dtype, which = row["dtype"], row["bias"]
            what = f"{backend} {row['activation']} {dtype} {which} {row['shape']}"
            gate = _input(row["shape"], dtype, device).requires_grad_()
            value = _input(row["shape"], dtype, device).requires_grad_()
            n = gate.shape[-1]
            gb = (
                random_input((n,), dtype, device, 1.0).requires_grad_()
                if which != "value"
                else None
            )
            vb = (
                random_input((n,), dtype, device, 1.0).requires_grad_() if which != "gate" else None
            )
            out = glu_fused.gated(gate, value, row["activation"], gate_bias=gb, value_bias=vb)
            inputs64 = [
                t.detach().double().requires_grad_() if t is not None else None
                for t in (gate, value, gb, vb)
            ]
            want = reference.gated(inputs64[0], inputs64[1], row["activation"], *inputs64[2:])
            assert_matches(out, want, dtype, what)
            upstream = random_input(out.shape, dtype, device)
            got = _grads(out, (gate, value, gb, vb), upstream)
            expected = _grads(want, inputs64, upstream.double())
            assert_matches(got[0], expected[0], dtype, what + " grad gate")
            assert_matches(got[1], expected[1], dtype, what + " grad value")
            refs = {"gate": expected[0], "value": expected[1]}
            inputs = [name for name, t in (("gate", gb), ("value", vb)) if t is not None]
            for g, w, name in zip(got[2:], expected[2:], inputs):
                check_bias_grad(g, w, refs[name], dtype, what + f" grad {name}_bias")


def _counts(tokens, device):
    return torch.tensor([0, tokens // 2 - 1, tokens], dtype=torch.int32, device=device)


def _assert_unwritten(rows, backend, what):
    # The ops leave them as they were (the suite's poison: NaN); the reference gives zeros.
    if backend == "reference":
        assert (rows == 0).all(), what
    else:
        assert rows.isnan().all(), what + ": rows past the count were written"


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_tokens_read_and_write_only_the_counted_rows(backend):
    device = device_of(backend)
    params = {"function": range(len(FUNCTIONS)), "dtype": DTYPES, "bias": [False, True]}
    experts, tokens, width = 3, 70, 40
    counts = _counts(tokens, device)
    with glu_fused.use_backend(backend):
        for row in combinations(backend, params):
            name, kw = FUNCTIONS[row["function"]]
            dtype = row["dtype"]
            what = f"{backend} {name}{kw} {dtype} bias={row['bias']}"
            x = random_input((experts, tokens, width), dtype, device).requires_grad_()
            b = random_input((width,), dtype, device, 1.0) if row["bias"] else None
            out = fused(name)(x, bias=b, valid_tokens=counts, **kw)
            upstream = random_input(out.shape, dtype, device)
            (gx,) = _grads(out, (x,), upstream)
            for e, n in enumerate(counts.tolist()):
                part = x[e, :n].detach().requires_grad_()
                want = fused(name)(part, bias=b, **kw)
                assert torch.equal(out[e, :n], want), f"{what}: expert {e}'s rows"
                _assert_unwritten(out[e, n:], backend, what)
                if n:
                    (want_grad,) = _grads(want, (part,), upstream[e, :n])
                    assert torch.equal(gx[e, :n], want_grad), f"{what}: expert {e}'s gradient"
                assert (gx[e, n:] == 0).all(), f"{what}: gradient rows past the count"


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_tokens_gated_and_the_bias_gradient(backend):
    device = device_of(backend)
    experts, tokens, width = 3, 70, 24
    counts = _counts(tokens, device)
    for dtype in DTYPES if backend != "triton" else (torch.float32,):
        gate = random_input((experts, tokens, width), dtype, device).requires_grad_()
        value = random_input((experts, tokens, width), dtype, device).requires_grad_()
        gb = random_input((width,), dtype, device, 1.0).requires_grad_()
        vb = random_input((width,), dtype, device, 1.0).requires_grad_()
        with glu_fused.use_backend(backend):
            out = glu_fused.gated(
                gate, value, "silu", gate_bias=gb, value_bias=vb, valid_tokens=counts
            )
        inputs64 = [t.detach().double().requires_grad_() for t in (gate, value, gb, vb)]
        want = reference.gated(*inputs64[:2], "silu", *inputs64[2:], valid_tokens=counts)
        mask = reference.row_mask(gate, counts)
        assert_matches(torch.where(mask, out, 0), want, dtype, f"{backend} {dtype}")
        upstream = random_input(out.shape, dtype, device)
        got = _grads(out, (gate, value, gb, vb), upstream)
        expected = _grads(want, inputs64, upstream.double())
        for g, w, what in zip(got[:2], expected[:2], ("gate", "value")):
            assert_matches(g, w, dtype, f"{backend} {dtype} grad {what}")
        for g, w, terms, what in zip(got[2:], expected[2:], expected[:2], ("gate", "value")):
            check_bias_grad(g, w, terms, dtype, f"{backend} {dtype} grad {what}_bias")


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_bias_gradient_bits_do_not_depend_on_the_run_or_the_threads(backend):
    device = device_of(backend)
    x = random_input((300, 96), torch.bfloat16, device).requires_grad_()
    b = random_input((96,), torch.bfloat16, device, 1.0).requires_grad_()
    upstream = random_input((300, 48), torch.bfloat16, device)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            with glu_fused.use_backend(backend):
                out = glu_fused.swiglu(x, bias=b)
            results.append(_grads(out, (x, b), upstream))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])


FP8_MODES = {
    "tensor": {"granularity": "tensor"},
    "token": {},
    "group64": {"granularity": "group", "group_size": 64},
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_with_bias_and_counts_is_the_rule_on_the_plain_result(backend):
    device = device_of(backend)
    experts, tokens, width = 3, 20, 256
    counts = _counts(tokens, device)
    mask = torch.arange(tokens, device=device)[None, :] < counts[:, None]
    for dtype in (torch.bfloat16, torch.float32):
        for mode, options in FP8_MODES.items():
            x = random_input((experts, tokens, width), dtype, device)
            b = random_input((width,), dtype, device, 1.0)
            what = f"{backend} {dtype} {mode}"
            with glu_fused.use_backend(backend), torch.no_grad():
                q, s = glu_fused.swiglu(
                    x, bias=b, valid_tokens=counts, out_dtype=torch.float8_e4m3fn, **options
                )
                plain = glu_fused.swiglu(x, bias=b, valid_tokens=counts)
            args = _fp8.resolve(torch.float8_e4m3fn, **options)
            want_q, want_s = _fp8.quantize(torch.where(mask[..., None], plain, 0), args, None)
            assert torch.equal(q[mask].view(torch.uint8), want_q[mask].view(torch.uint8)), what
            if mode == "tensor":
                assert torch.equal(s, want_s), what
            else:
                assert torch.equal(s[mask], want_s[mask]), what


# ---- autograd, transforms, compile: float64, the native family and the reference ----------

AUTOGRAD_BACKENDS = backend_params(("cpu", "cuda", "reference"))


@pytest.mark.parametrize("backend", AUTOGRAD_BACKENDS)
def test_gradcheck_and_gradgradcheck_with_bias_and_counts(backend):
    device = device_of(backend)
    rows = random_input((6, 14), torch.float64, device)[:, 2:12]  # strided rows of 10
    dense = random_input((2, 7, 10), torch.float64, device)
    counts = torch.tensor([3, 7], dtype=torch.int32, device=device)
    mask = reference.row_mask(dense, counts)
    b = random_input((10,), torch.float64, device, 1.0)
    gb, vb = (
        random_input((5,), torch.float64, device, 1.0),
        random_input((5,), torch.float64, device, 1.0),
    )
    cases = {
        "swiglu strided": (lambda x, b: glu_fused.swiglu(x, bias=b), (rows, b)),
        "clamped interleaved": (
            lambda x, b: glu_fused.clamped_swiglu(x, bias=b, limit=1.5),
            (dense, b),
        ),
        "geglu counts": (
            lambda x, b: torch.where(mask, glu_fused.geglu(x, bias=b, valid_tokens=counts), 0),
            (dense, b),
        ),
        "gated both": (
            lambda g, v, gb, vb: glu_fused.gated(g, v, "gelu_tanh", gate_bias=gb, value_bias=vb),
            (rows[:, :5], rows[:, 5:], gb, vb),
        ),
    }
    with glu_fused.use_backend(backend):
        for what, (f, inputs) in cases.items():
            inputs = [t.detach().clone().requires_grad_() for t in inputs]
            assert torch.autograd.gradcheck(f, inputs), what
            assert torch.autograd.gradgradcheck(f, inputs), what


@pytest.mark.parametrize("backend", AUTOGRAD_BACKENDS)
def test_forward_ad_and_vmap_with_bias(backend):
    device = device_of(backend)
    x = random_input((4, 12), torch.float64, device)
    b = random_input((12,), torch.float64, device, 1.0)
    tx, tb = torch.randn_like(x), torch.randn_like(b)
    with glu_fused.use_backend(backend):
        out, tangent = torch.func.jvp(lambda x, b: glu_fused.swiglu(x, bias=b), (x, b), (tx, tb))
        batched = torch.func.vmap(lambda t: glu_fused.geglu(t, bias=b))(x.view(2, 2, 12))
    want, want_tangent = torch.func.jvp(lambda x, b: reference.swiglu(x, bias=b), (x, b), (tx, tb))
    assert_matches(out, want, torch.float64, "jvp out")
    assert_matches(tangent, want_tangent, torch.float64, "jvp tangent")
    assert_matches(batched.view(4, 6), reference.geglu(x, bias=b), torch.float64, "vmap")


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_compile_fullgraph_keeps_one_node_with_the_bias_gradient(backend):
    torch._dynamo.reset()
    device = device_of(backend)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = random_input((8, 16), torch.float32, device).requires_grad_()
    b = random_input((16,), torch.float32, device, 1.0).requires_grad_()
    with glu_fused.use_backend(backend):
        out = torch.compile(
            lambda t, b: glu_fused.swiglu(t, bias=b), fullgraph=True, backend=capture
        )(x, b)
        gx, gb = torch.autograd.grad(out.sum(), (x, b))
        eager = glu_fused.swiglu(x, bias=b)
        ex, eb = torch.autograd.grad(eager.sum(), (x, b))
    assert torch.equal(out, eager) and torch.equal(gx, ex) and torch.equal(gb, eb)
    packed, _ = ops_of(backend)
    calls = [n for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [packed.forward], calls

    # And under inductor, forward and backward: not at a level lowered by ATEN_CPU_CAPABILITY
    # (make test-cpu-levels), where Inductor's own C++ for the host fails to compile.
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        return
    torch._dynamo.reset()
    with glu_fused.use_backend(backend):
        compiled = torch.compile(lambda t, b: glu_fused.swiglu(t, bias=b).sum(), fullgraph=True)
        cx, cb = torch.autograd.grad(compiled(x, b), (x, b))
    assert torch.equal(cx, ex) and torch.equal(cb, eb)


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_opcheck_with_bias_and_counts(backend):
    device = device_of(backend)
    family = glu_fused.backends.BACKENDS[backend].family
    prefix = "" if family == "native" else "triton_"
    ops = torch.ops.glu_fused
    utils = (
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_dynamic",
    )
    x = random_input((2, 5, 8), torch.float32, device).requires_grad_()
    b = random_input((8,), torch.float32, device, 1.0).requires_grad_()
    full = torch.tensor([5, 5], dtype=torch.int32, device=device)  # every row: results defined
    grad = random_input((2, 5, 4), torch.float32, device)
    g, v = (
        x.detach()[..., :4].contiguous().requires_grad_(),
        x.detach()[..., 4:].contiguous().requires_grad_(),
    )
    gb = b.detach()[:4].clone().requires_grad_()
    args = (-1, "swiglu", "halves", 1.702, 7.0)
    for op, inputs in (
        (getattr(ops, f"{prefix}glu_forward"), (x, *args, b, full)),
        (getattr(ops, f"{prefix}glu_backward"), (grad, x, *args, b, full)),
        (getattr(ops, f"{prefix}glu_backward_bias"), (grad, x, *args, b, full)),
        (getattr(ops, f"{prefix}gated_forward"), (g, v, "silu", gb, None, full)),
        (getattr(ops, f"{prefix}gated_backward_bias"), (grad, g, v, "silu", gb, gb, full)),
    ):
        torch.library.opcheck(op.default, inputs, test_utils=utils)


# ---- errors -------------------------------------------------------------------------------


def _error(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value).split("\n")[0]


def test_errors_are_the_same_from_the_ops_and_the_reference():
    x = random_input((2, 3, 8), torch.float32)
    b = random_input((8,), torch.float32)
    counts = torch.tensor([1, 3], dtype=torch.int32)
    bad = {
        "bias shape": dict(bias=b[:6]),
        "bias dtype": dict(bias=b.double()),
        "bias device": dict(bias=b.to("meta")),
        "bias not last": dict(bias=random_input((2,), torch.float32), dim=0),
        "counts dtype": dict(valid_tokens=counts.long()),
        "counts shape": dict(valid_tokens=counts[:1]),
        "counts device": dict(valid_tokens=counts.to("meta")),
        "counts range": dict(valid_tokens=torch.tensor([1, 4], dtype=torch.int32)),
        "counts negative": dict(valid_tokens=torch.tensor([-1, 0], dtype=torch.int32)),
        "counts 2-D x": dict(valid_tokens=counts, x=x[0]),
    }
    for what, kwargs in bad.items():
        kwargs = dict(kwargs)
        t = kwargs.pop("x", x)
        errors = []
        for backend in ("cpu", "reference"):
            with glu_fused.use_backend(backend):
                errors.append(_error(lambda t=t, kw=kwargs: glu_fused.swiglu(t, **kw)))
        assert errors[0] == errors[1], (what, errors)
        assert errors[0][1].startswith("glu_fused: "), (what, errors)
    gate_errors = []
    for backend in ("cpu", "reference"):
        with glu_fused.use_backend(backend):
            gate_errors.append(_error(lambda: glu_fused.gated(x, x, gate_bias=b[:3])))
    assert gate_errors[0] == gate_errors[1], gate_errors
