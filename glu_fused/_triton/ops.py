"""The Triton kernels as the implementations of the triton family's ops, for CUDA (and
ROCm) tensors, and for CPU tensors under Triton's interpreter.

Each call is planned by the extension, as the CPU and CUDA kernels' are
(glu_fused._C.plan_*: arguments checked, results allocated, layouts found), then launched
once (launch.py). The ops' schemas, fake kernels and autograd are the extension's too.
"""

import torch

from .._extension import _C
from . import INTERPRETER


def _launch(kernel: str, plan: dict | None, like: torch.Tensor) -> None:
    if plan is not None:
        from . import launch  # imports triton: at the first call only

        launch.launch(kernel, plan, like)


def glu_forward(x, dim, function, layout, alpha, limit, bias=None, valid_tokens=None):
    out, plan = _C.plan_glu_forward(x, dim, function, layout, alpha, limit, bias, valid_tokens)
    _launch("forward", plan, x)
    return out


def glu_backward(grad_out, x, dim, function, layout, alpha, limit, bias=None, valid_tokens=None):
    grad_x, plan, _ = _C.plan_glu_backward(
        grad_out, x, dim, function, layout, alpha, limit, bias, valid_tokens
    )
    _launch("backward", plan, x)
    return grad_x


def glu_backward_bias(grad_out, x, dim, function, layout, alpha, limit, bias, valid_tokens=None):
    grad_x, plan, finish = _C.plan_glu_backward(
        grad_out, x, dim, function, layout, alpha, limit, bias, valid_tokens, True
    )
    _launch("backward", plan, x)
    return grad_x, finish()


def gated_forward(gate, value, activation, gate_bias=None, value_bias=None, valid_tokens=None):
    out, plan = _C.plan_gated_forward(gate, value, activation, gate_bias, value_bias, valid_tokens)
    _launch("forward", plan, gate)
    return out


def gated_backward(
    grad_out, gate, value, activation, gate_bias=None, value_bias=None, valid_tokens=None
):
    grads, plan, _ = _C.plan_gated_backward(
        grad_out, gate, value, activation, gate_bias, value_bias, valid_tokens
    )
    _launch("backward", plan, gate)
    return grads


def gated_backward_bias(
    grad_out, gate, value, activation, gate_bias, value_bias, valid_tokens=None
):
    grads, plan, finish = _C.plan_gated_backward(
        grad_out, gate, value, activation, gate_bias, value_bias, valid_tokens, True
    )
    _launch("backward", plan, gate)
    return (*grads, *finish())


def gated_backward_in_place(grad_out, gate, value, activation):
    plan = _C.plan_gated_backward_in_place(grad_out, gate, value, activation)
    _launch("backward_in_place", plan, gate)


def gated_backward_in_place_bias(grad_out, gate, value, activation):
    plan, finish = _C.plan_gated_backward_in_place_bias(grad_out, gate, value, activation)
    _launch("backward", plan, gate)
    return finish()


_lib = torch.library.Library("glu_fused", "IMPL")
for _op in (
    glu_forward,
    glu_backward,
    glu_backward_bias,
    gated_forward,
    gated_backward,
    gated_backward_bias,
    gated_backward_in_place,
    gated_backward_in_place_bias,
):
    for _key in ("CUDA", "CPU") if INTERPRETER else ("CUDA",):
        _lib.impl(f"triton_{_op.__name__}", _op, _key)
