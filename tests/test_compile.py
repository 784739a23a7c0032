"""The ops pass torch.library.opcheck, and every function compiles with fullgraph=True
(no graph break), forward and backward, to the reference's result and gradient.

opcheck (about a second a call: it traces the op through AOT dispatch) checks what every
function shares (the schema, the autograd and fake kernels, the result's shape from dim and
layout): its rows are a covering design (tests/covering.py) of function x layout x dtype,
layout x dtype x shape (a 2-D and a 3-D input) in full and every function with every
layout, dtype and shape; `make test-full` runs the full product.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    OP_FUNCTIONS,
    assert_matches,
    backend_params,
    device_of,
    ops_of,
    random_input,
)
from covering import design, each, select

import glu_fused
from glu_fused import reference

COMPILED_BACKENDS = backend_params(("cpu", "cuda", "triton"))


def _opcheck(op, args):
    torch.library.opcheck(
        op,
        args,
        test_utils=(
            "test_schema",
            "test_autograd_registration",
            "test_faketensor",
            "test_aot_dispatch_dynamic",
        ),
    )


# (shape, dim): a split along the last dim of a matrix, and along the first of a 3-D tensor.
OPCHECK_SHAPES = {"2d": ((3, 10), 1), "3d-first-dim": ((4, 2, 3), 0)}
OPCHECK_ROWS = design(
    {
        "function": OP_FUNCTIONS,
        "layout": LAYOUTS,
        "dtype": [torch.float32, torch.float64],
        "shape": list(OPCHECK_SHAPES),
    },
    full=[("layout", "dtype", "shape")],
)


@pytest.mark.parametrize("function", OP_FUNCTIONS)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_opcheck_packed_ops(backend, function):
    dev = device_of(backend)
    packed, _ = ops_of(backend)

    def check(layout, dtype, shape):
        shape, dim = OPCHECK_SHAPES[shape]
        x = random_input(shape, dtype, dev).requires_grad_()
        args = (dim, function, layout, 1.702, 7.0)
        _opcheck(packed.forward, (x, *args))
        out_shape = list(shape)
        out_shape[dim] //= 2
        grad = random_input(out_shape, dtype, dev).requires_grad_()
        _opcheck(packed.backward, (grad, x, *args))

    assert each(select(OPCHECK_ROWS, function=function), check) > 0


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_opcheck_gated_ops(backend, activation):
    dev = device_of(backend)
    _, gated = ops_of(backend)
    g, v, dy = (random_input((3, 7), torch.float64, dev).requires_grad_() for _ in range(3))
    _opcheck(gated.forward, (g, v, activation))
    _opcheck(gated.backward, (dy, g, v, activation))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_compile_fullgraph_forward_and_backward(backend, fn, kwargs, layout):
    """The compiled function's result and gradient, against the float64 reference's."""
    torch._dynamo.reset()
    x = random_input((6, 2 * 20), torch.float32, device_of(backend))

    def step(t, module=glu_fused):
        return getattr(module, fn)(t, layout=layout, **kwargs) * 2

    with glu_fused.use_backend(backend):
        compiled = torch.compile(step, fullgraph=True, backend="inductor")
        xc = x.clone().requires_grad_()
        out = compiled(xc)
        cotangent = random_input(out.shape, torch.float32, out.device)
        out.backward(cotangent)
    x64 = x.double().requires_grad_()
    want = step(x64, reference)
    want.backward(cotangent.double())
    assert_matches(out, want, torch.float32, "compiled forward")
    assert_matches(xc.grad, x64.grad, torch.float32, "compiled backward")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_compile_keeps_the_fused_op_in_the_graph(backend):
    """The graph holds our op as one node: it is not decomposed or traced through."""
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = random_input((4, 16), torch.float32, device_of(backend))
    g, v = x.chunk(2, -1)
    with glu_fused.use_backend(backend):
        torch.compile(lambda t: glu_fused.swiglu(t), fullgraph=True, backend=capture)(x)
        torch.compile(lambda a, b: glu_fused.gated(a, b, "gelu"), fullgraph=True, backend=capture)(
            g, v
        )
    targets = [n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    packed, gated = ops_of(backend)
    assert packed.forward in targets, targets
    assert gated.forward in targets, targets


def test_compile_gated_mlp_fullgraph():
    torch._dynamo.reset()
    mlp = glu_fused.nn.GatedMLP(16, 32)
    x = torch.randn(5, 16)
    compiled = torch.compile(mlp, fullgraph=True)
    compiled(x).sum().backward()
    grad = mlp.gate_up.weight.grad.clone()
    mlp.zero_grad()
    mlp(x).sum().backward()
    torch.testing.assert_close(grad, mlp.gate_up.weight.grad, rtol=1e-5, atol=1e-5)
