"""The fused ops as `torch.library` operators, and their autograd.

Schemas are defined here, once, whether or not the compiled extension is present; the
extension (glu_fused._C) implements them per device with TORCH_LIBRARY_IMPL. The Triton
backend defines the same four ops again under a `triton_` prefix (`define_families`) and
implements those in Python. Each op has a fake implementation (shapes for torch.compile
and meta tensors), an autograd formula and a vmap rule, so it passes
`torch.library.opcheck` and stays one node under torch.compile.

Two op families:
  glu_forward(x, dim, function, interleaved, alpha, limit) -> out
  glu_backward(grad_out, x, dim, function, interleaved, alpha, limit) -> grad_x
  gated_forward(gate, value, activation) -> out
  gated_backward(grad_out, gate, value, activation) -> (grad_gate, grad_value)

The backward ops recompute the activation from the saved inputs: autograd saves only
the inputs. Second-order gradients run through the differentiable reference.

Forward-mode AD: custom ops cannot carry a jvp rule, so calls made under forward-mode AD
or a torch.func transform go through `FusedFunction`, an autograd.Function with a jvp
(from the backward op's slopes) and a generated vmap rule; everywhere else (torch.compile
included, which does not trace custom jvps) the op is called directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad

from . import reference

_lib = torch.library.Library("glu_fused", "DEF")


@dataclass(frozen=True)
class OpFamily:
    """A forward op, its backward op, and the reference they must agree with.

    Both ops take `n_tensors` tensors first, then plain arguments (`args`); the backward
    op takes the upstream gradient before them. `dim_arg` is the index, among the plain
    arguments, of a dim that vmap moves by one, or None.
    """

    forward: Callable[..., torch.Tensor]
    backward: Callable[..., Any]
    reference: Callable[..., torch.Tensor]
    n_tensors: int
    dim_arg: int | None
    # The output's tangent from d(out)/d(input) per input element (the backward op's result
    # for a unit upstream gradient) and the inputs' tangents.
    tangent: Callable[..., torch.Tensor]

    def backward_tuple(self, grad: torch.Tensor, tensors, args) -> tuple[torch.Tensor, ...]:
        """Input gradients by the fused backward op (first order)."""
        out = self.backward(grad, *tensors, *args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def reference_vjp(self, grad: torch.Tensor, *tensors_and_args) -> tuple[torch.Tensor, ...]:
        """Input gradients through the reference: differentiable to any order."""
        tensors = tensors_and_args[: self.n_tensors]
        args = tensors_and_args[self.n_tensors :]
        _, vjp = torch.func.vjp(lambda *ts: self.reference(*ts, *args), *tensors)
        return vjp(grad)

    def vjp(self, grad: torch.Tensor, tensors, args) -> tuple[torch.Tensor, ...]:
        # Grad mode is on inside a backward only for create_graph=True: second order.
        if torch.is_grad_enabled():
            return self.reference_vjp(grad, *tensors, *args)
        return self.backward_tuple(grad.contiguous(), tensors, args)


def _packed_tangent(slopes, tangents, args):
    dim, _, interleaved = args[:3]
    first, second = reference.split(slopes[0] * tangents[0], dim, interleaved)
    return first + second


def _gated_tangent(slopes, tangents, args):
    return slopes[0] * tangents[0] + slopes[1] * tangents[1]


def _register_autograd(family: OpFamily) -> None:
    n = family.n_tensors

    def setup_forward(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n])
        ctx.args = inputs[n:]

    def backward_of_forward(ctx, grad):
        grads = family.vjp(grad, ctx.saved_tensors, ctx.args)
        return (*grads, *([None] * len(ctx.args)))

    torch.library.register_autograd(
        family.forward, backward_of_forward, setup_context=setup_forward, lib=_lib
    )

    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(*inputs[: n + 1])
        ctx.args = inputs[n + 1 :]

    def backward_of_backward(ctx, *grad_grads):
        saved = ctx.saved_tensors
        grad_grads = [
            torch.zeros_like(saved[1 + i]) if g is None else g for i, g in enumerate(grad_grads)
        ]
        _, vjp = torch.func.vjp(lambda *ts: family.reference_vjp(ts[0], *ts[1:], *ctx.args), *saved)
        return (*vjp(tuple(grad_grads)), *([None] * len(ctx.args)))

    torch.library.register_autograd(
        family.backward, backward_of_backward, setup_context=setup_backward, lib=_lib
    )


def _batch_first(tensors, in_dims, batch_size: int) -> list[torch.Tensor]:
    """Every tensor with its vmap dim moved to the front (unbatched ones expanded)."""
    out = []
    for t, d in zip(tensors, in_dims):
        if d is None:
            out.append(t.unsqueeze(0).expand(batch_size, *t.shape))
        else:
            out.append(t.movedim(d, 0))
    return out


def _register_vmap(op, n_tensors: int, dim_arg: int | None, n_outputs: int) -> None:
    # Batching rule: the batch dim goes first and the op runs once on the whole batch; a
    # non-negative dim argument moves one place right (a negative one counts from the end).
    def rule(info, in_dims, *inputs):
        tensors = _batch_first(inputs[:n_tensors], in_dims[:n_tensors], info.batch_size)
        args = list(inputs[n_tensors:])
        if dim_arg is not None and args[dim_arg] >= 0:
            args[dim_arg] += 1
        out = op(*tensors, *args)
        return out, (0,) * n_outputs if n_outputs > 1 else 0

    torch.library.register_vmap(op, rule, lib=_lib)


# Fake implementations: the result is contiguous, with dim halved for the packed ops.
def _glu_forward_fake(x, dim, function, interleaved, alpha, limit):
    shape = list(x.shape)
    shape[dim] //= 2
    return x.new_empty(shape)


def _glu_backward_fake(grad_out, x, dim, function, interleaved, alpha, limit):
    return x.new_empty(x.shape)


def _gated_forward_fake(gate, value, activation):
    return gate.new_empty(gate.shape)


def _gated_backward_fake(grad_out, gate, value, activation):
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)


_FAKES = {
    "glu_forward": _glu_forward_fake,
    "glu_backward": _glu_backward_fake,
    "gated_forward": _gated_forward_fake,
    "gated_backward": _gated_backward_fake,
}


def define_families(prefix: str = "") -> tuple[OpFamily, OpFamily]:
    """Defines the four ops under glu_fused::{prefix}*, with their fake implementations,
    autograd and vmap rules, and returns (packed family, gated family).

    The extension implements the unprefixed ops per device in C++; another backend (Triton)
    defines its own prefixed ops, so that both can be built into one process.
    """
    names = {op: f"{prefix}{op}" for op in _FAKES}
    _lib.define(
        f"{names['glu_forward']}(Tensor x, int dim, str function, bool interleaved, "
        "float alpha, float limit) -> Tensor"
    )
    _lib.define(
        f"{names['glu_backward']}(Tensor grad_out, Tensor x, int dim, str function, "
        "bool interleaved, float alpha, float limit) -> Tensor"
    )
    _lib.define(f"{names['gated_forward']}(Tensor gate, Tensor value, str activation) -> Tensor")
    _lib.define(
        f"{names['gated_backward']}(Tensor grad_out, Tensor gate, Tensor value, "
        "str activation) -> (Tensor, Tensor)"
    )

    for op, fake in _FAKES.items():
        torch.library.register_fake(f"glu_fused::{names[op]}", fake, lib=_lib)

    ops = torch.ops.glu_fused
    packed = OpFamily(
        forward=getattr(ops, names["glu_forward"]).default,
        backward=getattr(ops, names["glu_backward"]).default,
        reference=reference.packed,
        n_tensors=1,
        dim_arg=0,
        tangent=_packed_tangent,
    )
    gated = OpFamily(
        forward=getattr(ops, names["gated_forward"]).default,
        backward=getattr(ops, names["gated_backward"]).default,
        reference=reference.gated_unchecked,
        n_tensors=2,
        dim_arg=None,
        tangent=_gated_tangent,
    )
    for family, n_outputs in ((packed, 1), (gated, 2)):
        _register_autograd(family)
        _register_vmap(family.forward, family.n_tensors, family.dim_arg, 1)
        _register_vmap(family.backward, family.n_tensors + 1, family.dim_arg, n_outputs)
    return packed, gated


# The extension's ops (glu_fused::glu_forward, ...): glu_fused._C implements them per device.
PACKED, GATED = define_families()


class FusedFunction(torch.autograd.Function):
    """Eager autograd for an OpFamily: the fused ops, plus forward-mode AD."""

    generate_vmap_rule = True

    @staticmethod
    def forward(family: OpFamily, *inputs):
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
        grads = ctx.family.vjp(grad, ctx.saved_tensors, ctx.args)
        return (None, *grads, *([None] * len(ctx.args)))

    @staticmethod
    def jvp(ctx, _family_tangent, *tangents):
        # Each output element depends on one pair of inputs, so its tangent is the sum over
        # the pair of slope * tangent, the slopes being the backward for a unit gradient.
        family = ctx.family
        tensors = ctx.saved_tensors
        tangents = [
            torch.zeros_like(p) if t is None else t
            for p, t in zip(tensors, tangents[: family.n_tensors])
        ]
        ones = tensors[0].new_ones(ctx.out_shape)
        slopes = family.backward_tuple(ones, tensors, ctx.args)
        return family.tangent(slopes, tangents, ctx.args)


def _forward_mode_possible() -> bool:
    """Whether forward-mode AD or a torch.func transform may see this call."""
    return (
        forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None
    )


def apply(family: OpFamily, *inputs) -> torch.Tensor:
    """Runs family's forward op with autograd.

    The op itself (its registered autograd) wherever it can: under torch.compile, and in
    eager code outside forward-mode AD and torch.func transforms, where it costs half the
    host time of an autograd.Function. FusedFunction where a jvp or vmap rule is needed.
    """
    if torch.compiler.is_compiling() or not _forward_mode_possible():
        return family.forward(*inputs)
    return FusedFunction.apply(family, *inputs)
