"""Autograd: gradcheck and gradgradcheck in float64, forward-mode AD, vmap, and that only
the inputs are saved for backward."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    FUNCTION_IDS,
    FUNCTIONS,
    LAYOUTS,
    backend_params,
    device_of,
    fused,
    ops_of,
    random_input,
    ref,
)

import glu_fused
from glu_fused import reference

BACKENDS = backend_params()


def _x(backend, shape=(3, 10)):
    return random_input(shape, torch.float64, device_of(backend)).requires_grad_()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("fn", "kwargs"), FUNCTIONS, ids=FUNCTION_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend, fn, kwargs, layout):
    for shape, dim in (((3, 10), -1), ((2, 6, 3), 1)):
        x = _x(backend, shape)
        f = lambda t, dim=dim: fused(fn)(t, dim, layout=layout, **kwargs)  # noqa: E731
        with glu_fused.use_backend(backend):
            assert torch.autograd.gradcheck(f, (x,))
            assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_gradcheck_and_gradgradcheck(backend, activation):
    g, v = _x(backend, (4, 7)), _x(backend, (4, 7))
    f = lambda a, b: glu_fused.gated(a, b, activation)  # noqa: E731
    with glu_fused.use_backend(backend):
        assert torch.autograd.gradcheck(f, (g, v))
        assert torch.autograd.gradgradcheck(f, (g, v))


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
    out = torch.func.vmap(lambda a: op(a, dim, "swiglu", False, 1.702, 7.0))(x)
    want = torch.stack([reference.swiglu(x[i], dim) for i in range(3)])
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
