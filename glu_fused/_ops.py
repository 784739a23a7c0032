"""The Python side of the fused ops, whose schemas, fake (Meta) kernels, CPU and CUDA
kernels and autograd kernels are C++ (csrc/glu_ops.cpp, csrc/glu_autograd.cpp).

Two op families share the schemas: "native" (glu_fused::glu_forward, ...: the extension's
kernels) and "triton" (glu_fused::triton_glu_forward, ...: glu_fused/_triton/ops.py).

  glu_forward(x, dim, function, layout, alpha, limit, bias=None, valid_tokens=None) -> out
  glu_backward(grad_out, x, dim, function, layout, alpha, limit, bias=None,
               valid_tokens=None) -> grad_x
  glu_backward_bias(grad_out, x, ..., bias, valid_tokens=None) -> (grad_x, grad_bias)
  gated_forward(gate, value, activation, gate_bias=None, value_bias=None,
                valid_tokens=None) -> out
  gated_backward(grad_out, gate, value, activation, ...) -> (grad_gate, grad_value)
  gated_backward_bias(grad_out, gate, value, activation, gate_bias, value_bias,
                      valid_tokens=None) -> (grad_gate, grad_value, grad_gate_bias,
                                             grad_value_bias)

(the bias and token counts: docs/contract.md, "Bias and token counts"; the *_bias ops are
the backward that autograd calls when a bias needs its gradient, fused into the same pass.)

Registered here, for both families:
  * the double-backward ops, glu_double_backward and gated_double_backward: the
    reference's second derivatives in plain PyTorch (_derivatives.py), differentiable to
    any higher order;
  * vmap rules of the forward and backward ops (one call over the whole batch);
  * `FusedFunction` and `FusedBackward`, autograd.Functions over the same ops, for what C++
    autograd cannot do: forward-mode AD and torch.func transforms. First-order gradients
    still come from the fused backward op; second order from the double-backward op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._ops import OpOverload

from . import reference
from ._derivatives import gated_double_backward, packed_double_backward
from ._extension import _C

assert _C is not None, "glu_fused._ops needs the compiled extension"

_lib = torch.library.Library("glu_fused", "IMPL")
_ops = torch.ops.glu_fused
FAMILIES = tuple(_C.FAMILIES)


@dataclass(frozen=True)
class OpFamily:
    """A forward op with its backward and double-backward ops.

    Every op takes its `n_tensors` tensor inputs first (the backward ops the upstream
    gradient before them), then the plain arguments `args`; `dim_arg` indexes a dim among
    them that vmap moves, or is None.
    """

    forward: OpOverload
    backward: OpOverload
    double_backward: OpOverload
    n_tensors: int
    dim_arg: int | None
    # The output's tangent from the slopes (the backward for a unit gradient) and the
    # inputs' tangents: each output element depends on one pair of inputs.
    tangent: Callable[..., torch.Tensor]
    # The backward written over its arguments (GatedMLP's backward; gated only): no autograd.
    backward_in_place: OpOverload | None
    # The same, which also returns the gradients of the biases gate and value hold.
    backward_in_place_bias: OpOverload | None

    def backward_tuple(self, grad: torch.Tensor, tensors, args) -> tuple[torch.Tensor, ...]:
        out = self.backward(grad, *tensors, *args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def double_backward_tuple(self, grad_grads, grad, tensors, args) -> tuple[torch.Tensor, ...]:
        """(d grad, *d tensors) of <grad_grads, backward(grad, *tensors)>."""
        return tuple(self.double_backward(*grad_grads, grad, *tensors, *args))


def _packed_tangent(slopes, tangents, args):
    dim, _, layout = args[:3]
    weighted = slopes[0] * tangents[0]
    first, second = reference.split(weighted, dim % weighted.dim(), layout == "interleaved")
    return first + second


def _gated_tangent(slopes, tangents, args):
    return slopes[0] * tangents[0] + slopes[1] * tangents[1]


def _family(name: str) -> tuple[OpFamily, OpFamily]:
    prefix = "" if name == "native" else f"{name}_"
    packed = OpFamily(
        forward=getattr(_ops, f"{prefix}glu_forward").default,
        backward=getattr(_ops, f"{prefix}glu_backward").default,
        double_backward=_ops.glu_double_backward.default,
        n_tensors=1,
        dim_arg=0,
        tangent=_packed_tangent,
        backward_in_place=None,
        backward_in_place_bias=None,
    )
    gated = OpFamily(
        forward=getattr(_ops, f"{prefix}gated_forward").default,
        backward=getattr(_ops, f"{prefix}gated_backward").default,
        double_backward=_ops.gated_double_backward.default,
        n_tensors=2,
        dim_arg=None,
        tangent=_gated_tangent,
        backward_in_place=getattr(_ops, f"{prefix}gated_backward_in_place").default,
        backward_in_place_bias=getattr(_ops, f"{prefix}gated_backward_in_place_bias").default,
    )
    return packed, gated


PACKED: dict[str, OpFamily] = {}
GATED: dict[str, OpFamily] = {}
for _name in FAMILIES:
    PACKED[_name], GATED[_name] = _family(_name)


# ---- second order (both families): the reference's second derivatives -------------------

_lib.impl("glu_double_backward", packed_double_backward, "CompositeImplicitAutograd")
_lib.impl("gated_double_backward", gated_double_backward, "CompositeImplicitAutograd")


# ---- vmap: the batch dim goes first and the op runs once on the whole batch ----------------


def _batch_first(tensors, in_dims, batch_size: int) -> list[torch.Tensor]:
    """Every tensor with its vmap dim moved to the front (unbatched ones expanded)."""
    out = []
    for t, d in zip(tensors, in_dims):
        if d is None:
            out.append(t.unsqueeze(0).expand(batch_size, *t.shape))
        else:
            out.append(t.movedim(d, 0))
    return out


def _register_vmap(op: OpOverload, n_tensors: int, dim_arg: int | None, n_outputs: int) -> None:
    # A non-negative dim argument moves one place right; a negative one counts from the end.
    def rule(info, in_dims, *inputs):
        if any(d is not None for d in in_dims[n_tensors:]):
            raise ValueError(
                "glu_fused: vmap over a bias or valid_tokens is not supported; batch the "
                "input, or add the bias first"
            )
        tensors = _batch_first(inputs[:n_tensors], in_dims[:n_tensors], info.batch_size)
        args = list(inputs[n_tensors:])
        if dim_arg is not None and args[dim_arg] >= 0:
            args[dim_arg] += 1
        out = op(*tensors, *args)
        return out, (0,) * n_outputs if n_outputs > 1 else 0

    torch.library.register_vmap(op, rule, lib=_lib)


for _kind, _n_outputs in ((PACKED, 1), (GATED, 2)):
    for _f in _kind.values():
        _register_vmap(_f.forward, _f.n_tensors, _f.dim_arg, 1)
        _register_vmap(_f.backward, _f.n_tensors + 1, _f.dim_arg, _n_outputs)
# The double-backward ops are compositions, but functorch batches only ATen's compositions
# by decomposing them: theirs need rules too.
_register_vmap(_ops.glu_double_backward.default, 3, 0, 2)
_register_vmap(_ops.gated_double_backward.default, 5, None, 3)


# ---- forward-mode AD and torch.func transforms ---------------------------------------------


def _zeros_for_none(tangents, like) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if t is None else t for p, t in zip(like, tangents)]


class FusedBackward(torch.autograd.Function):
    """A family's backward op as an autograd.Function: its gradient is the double-backward
    op; its tangent too, as the backward is linear in the upstream gradient and its
    derivative in the inputs is symmetric (a sum of Hessians weighted by that gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(family: OpFamily, grad: torch.Tensor, *inputs: Any):
        grads = family.backward_tuple(grad, inputs[: family.n_tensors], inputs[family.n_tensors :])
        return grads if len(grads) > 1 else grads[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        family, grad, *rest = inputs
        ctx.family = family
        ctx.args = tuple(rest[family.n_tensors :])
        tensors = rest[: family.n_tensors]
        ctx.save_for_backward(grad, *tensors)
        ctx.save_for_forward(grad, *tensors)

    @staticmethod
    def backward(ctx, *grad_grads):
        grad, *tensors = ctx.saved_tensors
        grad_grads = _zeros_for_none(grad_grads, tensors)
        grads = ctx.family.double_backward_tuple(grad_grads, grad, tensors, ctx.args)
        return (None, *grads, *([None] * len(ctx.args)))

    @staticmethod
    def jvp(ctx, _family_tangent, grad_tangent, *tangents):
        family = ctx.family
        grad, *tensors = ctx.saved_tensors
        grad_tangent = torch.zeros_like(grad) if grad_tangent is None else grad_tangent
        tangents = _zeros_for_none(tangents[: family.n_tensors], tensors)
        linear = family.backward_tuple(grad_tangent, tensors, ctx.args)
        curvature = family.double_backward_tuple(tangents, grad, tensors, ctx.args)[1:]
        out = tuple(a + b for a, b in zip(linear, curvature))
        return out if len(out) > 1 else out[0]


class FusedFunction(torch.autograd.Function):
    """A family's forward op as an autograd.Function, with a jvp and a generated vmap rule:
    the route of calls under forward-mode AD and torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(family: OpFamily, *inputs: Any):
        return family.forward(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        family, *rest = inputs
        ctx.family = family
        ctx.args = tuple(rest[family.n_tensors :])
        ctx.out_shape = output.shape
        tensors = rest[: family.n_tensors]
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)

    @staticmethod
    def backward(ctx, grad):
        grads = FusedBackward.apply(ctx.family, grad, *ctx.saved_tensors, *ctx.args)
        grads = grads if isinstance(grads, tuple) else (grads,)
        return (None, *grads, *([None] * len(ctx.args)))

    @staticmethod
    def jvp(ctx, _family_tangent, *tangents):
        family = ctx.family
        tensors = ctx.saved_tensors
        tangents = _zeros_for_none(tangents[: family.n_tensors], tensors)
        ones = tensors[0].new_ones(ctx.out_shape)
        slopes = FusedBackward.apply(family, ones, *tensors, *ctx.args)
        slopes = slopes if isinstance(slopes, tuple) else (slopes,)
        return family.tangent(slopes, tangents, ctx.args)


def add_bias(t: torch.Tensor, bias: torch.Tensor | None, compute_type: bool = False):
    """t + bias in the compute type (float32 for 16-bit inputs), unrounded, as the fused ops
    add it. Under forward-mode AD and torch.func transforms the bias is PyTorch's add (its
    tangent and batching are then PyTorch's), the op runs in the compute type on the sum and
    its result is rounded once to t's dtype by the caller: the fused op's numbers. Without a
    bias, t itself (in the compute type with `compute_type`, for gated's other tensor)."""
    if bias is None:
        return reference.opmath(t) if compute_type else t
    return reference.opmath(t) + reference.opmath(bias)


def transforms_active() -> bool:
    """Whether forward-mode AD or a torch.func transform may see this call, in eager code.
    (torch.compile traces the op itself: its graphs do not run custom jvps.)"""
    return not torch.compiler.is_compiling() and (
        torch.autograd.forward_ad._current_level >= 0
        or torch._C._functorch.peek_interpreter_stack() is not None
    )


# ---- FP8 output (glu_forward_fp8, gated_forward_fp8) ---------------------------------------
# Fused in every family: the native ops on the CPU (csrc/cpu/glu_cpu.cpp) and on CUDA
# (csrc/cuda/glu_fp8.cu), the Triton family's in glu_fused/_triton/fp8.py.


def _triton_fp8(name: str, *args, **rows):
    """The Triton family's fused FP8 call `name` (glu_fused/_triton/fp8.py), imported with
    Triton at the first call: importing glu_fused does not import Triton."""
    from ._triton import fp8

    return getattr(fp8, name)(*args, **rows)


# Family -> its FP8 calls: (packed, gated), taking the ops' arguments.
FP8: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "native": (_ops.glu_forward_fp8.default, _ops.gated_forward_fp8.default),
    "triton": tuple(functools.partial(_triton_fp8, f"{k}_fp8") for k in ("packed", "gated")),
}
