"""Autograd: gradcheck and gradgradcheck in float64, forward-mode AD, vmap, torch.func's
transforms, first order through the fused backward op in every mode, second order through
its derivative, and that only the inputs are saved for backward.

gradcheck and gradgradcheck run through ordinary autograd (the C++ autograd kernels, the
fused backward op, the double-backward op) on contiguous inputs and on views whose saved x is
not contiguous (transposed, row-strided, a middle dim of a permuted tensor): one item per
backend and function, looping over layout x input, in full where the kernels run natively,
a covering design (layout x input in full) in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    backend_params,
    combinations,
    device_of,
    fused,
    interpreted,
    ops_of,
    random_input,
    ref,
)
from covering import each, product, select
from torch.utils._python_dispatch import TorchDispatchMode

import glu_fused
from glu_fused import _derivatives, _table, reference

BACKENDS = backend_params()


def _x(backend, shape=(3, 10)):
    return random_input(shape, torch.float64, device_of(backend)).requires_grad_()


def _checks_of(backend):
    """gradcheck's and gradgradcheck's settings. Through Triton's interpreter (a tenth of a
    second a launch) their fast mode, which checks random projections of the Jacobians; the
    full Jacobians everywhere else, Triton on a GPU included."""
    return {"fast_mode": interpreted(backend)}


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """`t` as a leaf that requires grad, with its strides (detach keeps them)."""
    return t.detach().requires_grad_()


# gradcheck's inputs, float64, as (make(device) -> x, dim): contiguous ones, and views whose
# saved x is not contiguous, which the autograd kernels, the backward op and the
# double-backward op must each read where it is (a fault that mishandles them, such as a
# gradient doubled for non-contiguous inputs only, passes on contiguous ones).
GRADCHECK_INPUTS = {
    "contiguous": (lambda dev: random_input((3, 10), torch.float64, dev), -1),
    "middle-dim": (lambda dev: random_input((2, 6, 3), torch.float64, dev), 1),
    "transposed": (lambda dev: random_input((10, 3), torch.float64, dev).t(), -1),
    "row-strided": (lambda dev: random_input((3, 15), torch.float64, dev)[:, 2:12], -1),
    "middle-dim-of-permuted": (
        lambda dev: random_input((3, 2, 6), torch.float64, dev).transpose(1, 2),
        1,
    ),
}


@pytest.mark.parametrize("function", FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend, function):
    """Through ordinary autograd (the C++ autograd kernels, the fused backward op, the
    double-backward op), on contiguous and non-contiguous inputs."""
    fn, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]

    def check(layout, input):
        make, dim = GRADCHECK_INPUTS[input]
        x = _leaf(make(device_of(backend)))
        f = lambda t: fused(fn)(t, dim, layout=layout, **kwargs)  # noqa: E731
        with glu_fused.use_backend(backend):
            assert torch.autograd.gradcheck(f, (x,), **_checks_of(backend)), "gradcheck"
            assert torch.autograd.gradgradcheck(f, (x,), **_checks_of(backend)), "gradgradcheck"

    # Natively every layout x input; in Triton's interpreter (gradgradcheck makes hundreds of
    # launches) a covering design, layout x input in full.
    params = {"function": FUNCTION_IDS, "layout": LAYOUTS, "input": list(GRADCHECK_INPUTS)}
    rows = combinations(backend, params, [("layout", "input")])
    each(select(rows, function=function), check)


GATED_GRADCHECK_INPUTS = {
    "contiguous": lambda dev: (
        random_input((4, 7), torch.float64, dev),
        random_input((4, 7), torch.float64, dev),
    ),
    "transposed-and-strided": lambda dev: (
        random_input((7, 4), torch.float64, dev).t(),
        random_input((4, 10), torch.float64, dev)[:, 1:8],
    ),
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_gradcheck_and_gradgradcheck(backend, activation):
    f = lambda a, b: glu_fused.gated(a, b, activation)  # noqa: E731

    def check(input):
        g, v = (_leaf(t) for t in GATED_GRADCHECK_INPUTS[input](device_of(backend)))
        with glu_fused.use_backend(backend):
            assert torch.autograd.gradcheck(f, (g, v), **_checks_of(backend)), "gradcheck"
            assert torch.autograd.gradgradcheck(f, (g, v), **_checks_of(backend)), "gradgradcheck"

    each(product({"input": list(GATED_GRADCHECK_INPUTS)}), check)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_mode_ad_matches_reference(backend, fn, kwargs, layout):
    x = _x(backend, (4, 12)).detach()
    t = torch.randn_like(x)
    with glu_fused.use_backend(backend):
        out, tangent = torch.func.jvp(lambda a: fused(fn)(a, layout=layout, **kwargs), (x,), (t,))
    ref_out, ref_tangent = torch.func.jvp(lambda a: ref(fn)(a, layout=layout, **kwargs), (x,), (t,))
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-10, atol=1e-12)

    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), glu_fused.use_backend(backend):
        dual_out = fused(fn)(fwAD.make_dual(x, t), layout=layout, **kwargs)
        tangent2 = fwAD.unpack_dual(dual_out).tangent
    assert tangent2 is not None
    torch.testing.assert_close(tangent2, ref_tangent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_forward_mode_ad(backend):
    g, v = _x(backend, (3, 5)).detach(), _x(backend, (3, 5)).detach()
    tg, tv = torch.randn_like(g), torch.randn_like(v)
    with glu_fused.use_backend(backend):
        _, tangent = torch.func.jvp(lambda a, b: glu_fused.gated(a, b, "gelu"), (g, v), (tg, tv))
    _, want = torch.func.jvp(lambda a, b: reference.gated(a, b, "gelu"), (g, v), (tg, tv))
    torch.testing.assert_close(tangent, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("in_dim", [0, 1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_forward_and_grad(backend, layout, in_dim):
    x = _x(backend, (5, 4, 6)).detach()
    batched = x.movedim(0, in_dim)
    f = lambda a: fused("swiglu")(a, 0, layout=layout)  # noqa: E731, split dim 0 of each sample
    with glu_fused.use_backend(backend):
        out = torch.func.vmap(f, in_dims=in_dim)(batched)
        grads = torch.func.vmap(torch.func.grad(lambda a: f(a).sum()), in_dims=in_dim)(batched)
    expected = torch.stack([ref("swiglu")(x[i], 0, layout=layout) for i in range(5)])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    want = torch.stack(
        [
            torch.func.grad(lambda a: ref("swiglu")(a, 0, layout=layout).sum())(x[i])
            for i in range(5)
        ]
    )
    torch.testing.assert_close(grads, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_gated_with_unbatched_value(backend):
    g, v = _x(backend, (4, 3, 5)).detach(), _x(backend, (3, 5)).detach()
    with glu_fused.use_backend(backend):
        out = torch.func.vmap(lambda a, b: glu_fused.gated(a, b, "relu"), in_dims=(0, None))(g, v)
    torch.testing.assert_close(
        out, reference.gated(g, v.expand_as(g), "relu"), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev_matches_reference(backend):
    x = _x(backend, (2, 6)).detach()
    with glu_fused.use_backend(backend):
        jac = torch.func.jacrev(lambda a: glu_fused.geglu(a))(x)
    torch.testing.assert_close(jac, torch.func.jacrev(reference.geglu)(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_autograd_saves_only_the_input(backend, fn, kwargs):
    x = random_input((4, 16), torch.float32, device_of(backend)).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with glu_fused.use_backend(backend):
            out = fused(fn)(x, **kwargs)
    assert len(saved) == 1 and saved[0] is x, [tuple(t.shape) for t in saved]
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_gated_saves_only_its_inputs(backend):
    g, v = (
        random_input((3, 8), torch.float32, device_of(backend)).requires_grad_() for _ in range(2)
    )
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with glu_fused.use_backend(backend):
            glu_fused.gated(g, v, "silu")
    assert len(saved) == 2 and saved[0] is g and saved[1] is v


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensor_gives_empty_result_and_gradient(backend):
    x = torch.empty(0, 8, device=device_of(backend), requires_grad=True)
    with glu_fused.use_backend(backend):
        out = glu_fused.swiglu(x)
        out.sum().backward()
    assert out.shape == (0, 4)
    assert x.grad.shape == (0, 8)


@pytest.mark.parametrize("dim", [0, -1, -2])
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_vmap_of_the_op_itself_with_any_dim(backend, dim):
    """The ops' batching rule also serves direct callers, whose dim may be negative."""
    x = _x(backend, (3, 4, 6)).detach()
    op = ops_of(backend)[0].forward
    out = torch.func.vmap(lambda a: op(a, dim, "swiglu", "halves", 1.702, 7.0))(x)
    want = torch.stack([reference.swiglu(x[i], dim) for i in range(3)])
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


class _OpsSeen(TorchDispatchMode):
    """Records every op that reaches the dispatcher's Python key while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func)
        return func(*args, **(kwargs or {}))


def _grad_by_backward(f, x, cotangent):
    x = x.clone().requires_grad_()
    f(x).backward(cotangent)
    return x.grad


def _grad_with_graph(f, x, cotangent):
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x), x, cotangent, create_graph=True)
    return grad


# Each mode's first-order derivative of f at x: a vector-Jacobian product for the cotangent,
# or, for forward mode, the Jacobian-vector product with it as the tangent.
FIRST_ORDER_MODES = {
    "backward": _grad_by_backward,
    "create_graph": _grad_with_graph,
    "func.grad": lambda f, x, c: torch.func.grad(lambda t: (f(t) * c).sum())(x),
    "func.vjp": lambda f, x, c: torch.func.vjp(f, x)[1](c)[0],
    "jacrev": lambda f, x, c: torch.einsum("ij,ijkl->kl", c, torch.func.jacrev(f)(x)),
    "vmap(grad)": lambda f, x, c: torch.func.vmap(torch.func.grad(lambda t, ci: (f(t) * ci).sum()))(
        x, c
    ),
    "jvp": lambda f, x, c: torch.func.jvp(f, (x,), (torch.cat([c, c], -1),))[1],
}


@pytest.mark.parametrize("mode", list(FIRST_ORDER_MODES))
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
def test_first_order_gradients_run_the_fused_backward(backend, mode):
    """In every mode, first-order derivatives come from the fused backward op, and match the
    reference's: a wrong backward kernel fails here whichever way it is reached."""
    x = _x(backend, (3, 10)).detach()
    cotangent = torch.randn(3, 5, dtype=torch.float64, device=x.device)
    derivative = FIRST_ORDER_MODES[mode]
    with glu_fused.use_backend(backend), _OpsSeen() as seen:
        got = derivative(glu_fused.geglu, x, cotangent)
    want = derivative(reference.geglu, x, cotangent)
    assert ops_of(backend)[0].backward in seen.ops, sorted(map(str, seen.ops))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _reference_gate(activation: str):
    if activation == "clamped_silu":
        return lambda g: (
            reference.clamp(g, None, 7.0) * reference.sigmoid(1.702 * reference.clamp(g, None, 7.0))
        )
    return reference.ACTIVATIONS[activation]


@pytest.mark.parametrize("activation", list(_table.ACTIVATIONS))
def test_derivatives_terms_are_the_references_derivatives(activation):
    """The double-backward ops' written-out derivatives are autograd's of the reference."""
    g = random_input((400,), torch.float64)
    g = g[(g.abs() > 1e-3) & ((g - 7.0).abs() > 1e-3)]  # off the kinks of relu and the clamp
    a, a1, a2 = _derivatives.gate_terms(g, activation, 1.702, 7.0)
    f = _reference_gate(activation)
    d1 = torch.func.vmap(torch.func.grad(f))(g)
    d2 = torch.func.vmap(torch.func.grad(torch.func.grad(f)))(g)
    for got, want, what in ((a, f(g), "value"), (a1, d1, "first"), (a2, d2, "second")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=what)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_matches_reference(backend, fn, kwargs, layout):
    x = _x(backend, (2, 6)).detach()

    def loss(f):
        return lambda t: f(t, layout=layout, **kwargs).sin().sum()

    with glu_fused.use_backend(backend):
        got = torch.func.hessian(loss(fused(fn)))(x)
    want = torch.func.hessian(loss(ref(fn)))(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
