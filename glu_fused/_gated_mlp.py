r"""GatedMLP's lean block: :math:`y = W_d\,(\mathrm{act}(g) \odot u) + b_d`, with
:math:`g, u` the gate and up projections of x, as one autograd function that keeps for
backward only x and the projections (x + 2I elements per token for intermediate size I,
where an eager MLP keeps x + 4I), or, with `recompute`, only x.

Backward, for the upstream gradient dy:

1. :math:`dh = dy\,W_d`: the one activation-sized buffer backward allocates;
2. one fused pass (the gated_backward_in_place op) over g, u and dh: it recomputes
   :math:`h = \mathrm{act}(g) \odot u` and writes it over dh, and writes :math:`dg, du` over
   g and u, which nothing needs afterwards;
3. :math:`dW_d = dy^T h`, :math:`dW = [dg, du]^T x`, :math:`dx = dg\,W_g + du\,W_u`.

The projections come either as one fused weight (GatedMLP's gate_up, in either layout: g and
u are then views of one buffer) or as two (a Hugging Face MLP's gate_proj and up_proj, kept
as they are). With `recompute`, backward computes them again first: one more matmul, in
place of keeping them.

Writing over the kept projections is what saves the memory. They are this function's own
intermediates, which nothing else holds, so the pass runs below autograd (their versions
stay as saved), and a second backward through the same graph (retain_graph=True) computes
them again from x, as `recompute` does: the same gradients. A backward that builds a graph
(create_graph=True) takes a differentiable path instead, through the fused ops' own autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import backends, functional, reference
from ._table import packed_of


@dataclass(frozen=True)
class Block:
    """What a lean block computes: the gate's activation (a name of `gated`'s), how a fused
    projection packs gate and up ("halves" or "interleaved"; None: two projections), and
    whether backward recomputes the projections instead of keeping them."""

    activation: str
    layout: str | None
    recompute: bool = False

    def split(self, gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the gate and up parts of a fused projection's output."""
        return reference.split(gate_up, gate_up.dim() - 1, self.layout == "interleaved")

    def activate(
        self, gate: torch.Tensor, up: torch.Tensor, gate_up: torch.Tensor | None
    ) -> torch.Tensor:
        """act(gate) * up: the packed op where the fused projection has one, else `gated`."""
        packed = packed_of(self.activation) if gate_up is not None else None
        if packed is not None:
            return getattr(functional, packed.public)(
                gate_up, layout=self.layout, **dict(packed.options)
            )
        return functional.gated(gate, up, self.activation)


def applies(modules, x: torch.Tensor) -> bool:
    """Whether the lean block may stand in for the modules' own calls: a gradient is wanted,
    autocast is off, and the projections are plain nn.Linear with plain parameters and no hooks
    (tensor parallelism's DTensor weights and their hooks, a LoRA wrapper, a quantized linear,
    autocast's casts take the modules' own path)."""
    if not torch.is_grad_enabled() or _autocast(x):
        return False
    if not all(type(m) is torch.nn.Linear and not _hooked(m) for m in modules):
        return False
    params = [p for m in modules for p in (m.weight, m.bias) if p is not None]
    return all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in params) and (
        x.requires_grad or any(p.requires_grad for p in params)
    )


def check_input(x: torch.Tensor, weight: torch.Tensor) -> None:
    """x against the first projection's weight: a ValueError naming what differs, before
    anything runs (in place of a matmul's message)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"glu_fused: GatedMLP takes a tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"glu_fused: GatedMLP takes inputs of {weight.shape[-1]} features (the last dim), "
            f"got shape {tuple(x.shape)}"
        )
    checks = [("device", x.device, weight.device)]
    if not _autocast(x):  # autocast casts x and weights alike
        checks.append(("dtype", x.dtype, weight.dtype))
    for what, got, want in checks:
        if got != want:
            raise ValueError(
                f"glu_fused: GatedMLP's input must have its weights' {what}, {want}; got {got}"
            )


def _autocast(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False


def _hooked(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _project(x, weights, biases, block: Block) -> list[torch.Tensor]:
    """The projections of x: [gate_up] (fused) or [gate, up]."""
    return [F.linear(x, w, b) for w, b in zip(weights, biases)]


def _gate_and_up(projections: list[torch.Tensor], block: Block):
    """(gate, up, the fused output or None)."""
    if block.layout is not None:
        (gate_up,) = projections
        return (*block.split(gate_up), gate_up)
    return (*projections, None)


class LeanGatedMLP(torch.autograd.Function):
    """apply(block, x, w_down, b_down, *weights, *biases): one (fused gate_up) or two (gate,
    up) projection weights, and as many biases (None without)."""

    @staticmethod
    def forward(ctx, block: Block, x, w_down, b_down, *params):
        n = len(params) // 2
        weights, biases = params[:n], params[n:]
        projections = _project(x, weights, biases, block)
        h = block.activate(*_gate_and_up(projections, block))
        ctx.block, ctx.n = block, n
        kept = () if block.recompute else projections
        ctx.save_for_backward(x, w_down, *weights, *biases, *kept)
        return F.linear(h, w_down, b_down)

    @staticmethod
    def backward(ctx, dy):
        block, n = ctx.block, ctx.n
        x, w_down, *rest = ctx.saved_tensors
        weights, biases = rest[:n], rest[n : 2 * n]
        if torch.is_grad_enabled():  # create_graph=True: through differentiable ops
            projections = _project(x, weights, biases, block)
            h = block.activate(*_gate_and_up(projections, block))
            d_projections = torch.autograd.grad(
                h, projections, dy.matmul(w_down), create_graph=True
            )
            return _grads(ctx, dy, x, weights, biases, [h], d_projections)
        spent = block.recompute or getattr(ctx, "spent", False)  # overwritten by a backward
        projections = _project(x, weights, biases, block) if spent else list(rest[2 * n :])
        gate, up, _ = _gate_and_up(projections, block)
        h = dy.matmul(w_down)  # dh, until the in-place pass writes h over it
        ctx.spent = True
        _in_place(h, gate, up, block.activation)
        del gate, up
        # The projections now hold their own gradients; h goes to _grads alone, which frees it
        # once the down projection's weight gradient is taken, before the larger ones.
        held = [h]
        del h
        return _grads(ctx, dy, x, weights, biases, held, projections)


def _in_place(dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str) -> None:
    """h over dh, the gradients over gate and up, below autograd and its version counting:
    the kept projections' versions stay as saved, so that a second backward can unpack them
    (and recompute them). torch.compile traces the op itself (its graphs keep their own copies
    of saved tensors)."""
    backend = backends.route(dh.device.type)
    if torch.compiler.is_compiling():
        backend.gated_backward_in_place(dh, gate, up, activation)
        return
    with torch._C._AutoDispatchBelowADInplaceOrView():
        backend.gated_backward_in_place(dh, gate, up, activation)


def _grads(ctx, dy, x, weights, biases, held, d_projections) -> tuple[torch.Tensor | None, ...]:
    """Step 3: every gradient autograd asks for, from h (the one tensor in `held`, emptied
    once used) and the projections' gradients."""
    need = ctx.needs_input_grad  # (block, x, w_down, b_down, *weights, *biases)
    n = len(weights)
    dy2, x2 = _flat(dy), _flat(x)
    d_proj = [_flat(d) for d in d_projections]
    grads: list[torch.Tensor | None] = [None] * len(need)
    h = held.pop()
    if need[2]:
        grads[2] = dy2.t().matmul(_flat(h))
    del h
    if need[3]:
        grads[3] = dy2.sum(0)
    for i in range(n):
        if need[4 + i]:
            grads[4 + i] = d_proj[i].t().matmul(x2)
        if need[4 + n + i]:
            grads[4 + n + i] = d_proj[i].sum(0)
    if need[1]:
        dx = d_proj[0].matmul(weights[0])
        for i in range(1, n):
            dx = dx.addmm(d_proj[i], weights[i])
        grads[1] = dx.reshape(x.shape)
    return tuple(grads)
