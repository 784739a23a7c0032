r"""GatedMLP's lean block: :math:`y = W_d\,(\mathrm{act}(g) \odot u) + b_d`, with
:math:`g, u` the gate and up projections of x, as one autograd function that keeps for
backward only x and the projections (x + 2I elements per token for intermediate size I,
where an eager MLP keeps x + 4I), or, with `recompute`, only x.

Backward, for the upstream gradient dy:

1. :math:`dh = dy\,W_d`: the one activation-sized buffer backward allocates;
2. one fused pass (the gated_backward_in_place op) over g, u and dh: it recomputes
   :math:`h = \mathrm{act}(g) \odot u` and writes it over dh, and writes :math:`dg, du` over
   g and u, which nothing needs afterwards;
3. the gradients, each activation freed once its last use is done: :math:`dW = [dg, du]^T x`
   and :math:`dx = dg\,W_g + du\,W_u`, then the projections' gradients are freed (with two
   projections, each once its own are taken), then :math:`dW_d = dy^T h`, then h is freed.
   The weights' gradients are the largest tensors backward allocates, and the last of them
   is allocated with h alone left alive (an eager MLP has as much, and more of x's size).
   Where the tokens' activations outweigh the weights (more tokens than the block has
   outputs), :math:`dW_d` comes first instead, so that h is freed before the projections'
   gradients are taken: the order of the lower peak, counted in elements (_down_first).

The projections come either as one fused weight (GatedMLP's gate_up, in either layout: g and
u are then views of one buffer) or as two (a Hugging Face MLP's gate_proj and up_proj, kept
as they are). With `recompute`, backward computes them again first: one more matmul, in
place of keeping them.

Writing over the kept projections is what saves the memory. They are this function's own
intermediates, which nothing else holds, so the pass runs below autograd. They are not in
save_for_backward, whose SavedVariables would hold them until the graph is freed: forward
packs them itself through the saved-tensor hooks in effect, as a SavedVariable would
(saved_tensors_hooks, torch.autograd.graph.save_on_cpu, non-reentrant checkpointing see
them), keeps what the pack hook returned on ctx, and backward unpacks it and drops ctx's
reference, so that the projections die with backward's last use of them. Under torch.compile
they go through save_for_backward (AOTAutograd manages the saved tensors). A second backward
through the same graph (retain_graph=True) computes them again from x, as `recompute` does:
the same gradients. A backward that builds a graph (create_graph=True) takes a
differentiable path instead, through the fused ops' own autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _fp8, backends, functional, reference
from ._table import packed_of

# The FP8 type of the blocks' FP8 GEMMs (e4m3: the forward's, as in FP8 training recipes).
FP8_DTYPE = torch.float8_e4m3fn


@dataclass(frozen=True)
class Block:
    """What a lean block computes: the gate's activation (a name of `gated`'s), how a fused
    projection packs gate and up ("halves" or "interleaved"; None: two projections), and
    whether backward recomputes the projections instead of keeping them."""

    activation: str
    layout: str | None
    recompute: bool = False
    # The down projection's input quantized to FP8 ("tensor" or "token": the granularity of
    # h and, per tensor or per row, of the down weight), its GEMM run in FP8; None: not.
    fp8: str | None = None

    def split(self, gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the gate and up parts of a fused projection's output."""
        return reference.split(gate_up, gate_up.dim() - 1, self.layout == "interleaved")

    def join(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """A fused projection's tensor from its gate and up parts (split's inverse)."""
        return reference.join(gate, up, gate.dim() - 1, self.layout == "interleaved")

    def activate(
        self,
        gate: torch.Tensor,
        up: torch.Tensor,
        gate_up: torch.Tensor | None,
        bias: torch.Tensor | None = None,
        **fp8,
    ) -> torch.Tensor:
        """act(gate + b_g) * (up + b_u): the packed op where the fused projection has one,
        else `gated`; `bias`: the fused projection's (packed in its layout), added by the
        kernel, or None; `fp8`: the FP8 keywords ((q, scale) then)."""
        packed = packed_of(self.activation) if gate_up is not None else None
        if packed is not None:
            return getattr(functional, packed.public)(
                gate_up, layout=self.layout, **dict(packed.options), bias=bias, **fp8
            )
        biases = {}
        if bias is not None:
            biases = dict(zip(("gate_bias", "value_bias"), self.split(bias)))
        return functional.gated(gate, up, self.activation, **biases, **fp8)

    def down(self, projections, w_down, b_down, bias=None) -> torch.Tensor:
        """The down projection of act(gate) * up (`bias`: the fused projection's, for the
        kernel to add, or None): in the input's dtype, or (fp8) h quantized by the fused
        kernel and the GEMM in FP8 (torch._scaled_mm), the weight quantized per tensor or per
        row, the result in the input's dtype."""
        if self.fp8 is None:
            h = self.activate(*_gate_and_up(projections, self), bias=bias)
            return F.linear(h, w_down, b_down)
        w_q, w_scale = _fp8.quantize_weight(w_down, "tensor" if self.fp8 == "tensor" else "row")
        return self.down_quantized(projections, w_q, w_scale, b_down, bias)

    def down_quantized(self, projections, w_q, w_scale, b_down, bias=None) -> torch.Tensor:
        """down() with the weight already quantized (_fp8.quantize_weight's (q, scale))."""
        parts = _gate_and_up(projections, self)
        q, scale = self.activate(*parts, bias=bias, out_dtype=FP8_DTYPE, granularity=self.fp8)
        return _fp8.scaled_linear(q, scale, w_q, w_scale, b_down, projections[0].dtype)


def applies(modules, x: torch.Tensor) -> bool:
    """Whether the lean block may stand in for the modules' own calls: a gradient is wanted,
    autocast is off, and the projections are plain nn.Linear with plain parameters and no hooks
    (tensor parallelism's DTensor weights and their hooks, a LoRA wrapper, a quantized linear,
    autocast's casts take the modules' own path)."""
    if not torch.is_grad_enabled() or not plain(modules, x):
        return False
    params = [p for m in modules for p in (m.weight, m.bias) if p is not None]
    return x.requires_grad or any(p.requires_grad for p in params)


def plain(modules, x: torch.Tensor) -> bool:
    """Whether calling F.linear on the modules' parameters is what their calls compute: plain
    nn.Linear modules, no hooks, plain parameters, autocast off."""
    if _autocast(x) or not all(type(m) is torch.nn.Linear and not _hooked(m) for m in modules):
        return False
    params = [p for m in modules for p in (m.weight, m.bias) if p is not None]
    return all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in params)


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
        out = block.down(projections, w_down, b_down)
        ctx.block, ctx.n = block, n
        kept = () if block.recompute else projections
        if torch.compiler.is_compiling():  # AOTAutograd keeps what the graph saves
            ctx.save_for_backward(x, w_down, *weights, *biases, *kept)
            ctx.packed = None
        else:
            ctx.save_for_backward(x, w_down, *weights, *biases)
            ctx.packed = _pack(kept) if kept and any(ctx.needs_input_grad[1:]) else None
        return out

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
            return _grads(ctx, dy, x, weights, biases, [h], list(d_projections))
        spent = block.recompute or getattr(ctx, "spent", False)  # overwritten by a backward
        if spent:
            projections = _project(x, weights, biases, block)
        elif ctx.packed is None:  # compiled: saved with the rest
            projections = list(rest[2 * n :])
        else:
            projections = _unpack(ctx)
        del rest
        gate, up = _gate_and_up(projections, block)[:2]
        h = dy.matmul(w_down)  # dh, until the in-place pass writes h over it
        ctx.spent = True
        # The projections' biases' gradients, where asked, are summed by the same pass.
        bias_grad = any(ctx.needs_input_grad[4 + n : 4 + 2 * n])
        sums = _in_place(h, gate, up, block.activation, bias_grad)
        del gate, up
        # The projections now hold their own gradients. _grads gets the only references to
        # them and to h, in lists it empties as it goes, so that each dies once used.
        held = [h]
        del h
        bias_grads = None
        if sums is not None:
            bias_grads = [block.join(*sums)] if block.layout is not None else list(sums)
        return _grads(ctx, dy, x, weights, biases, held, projections, bias_grads)


def apply_linears(block: Block, x: torch.Tensor, projections, down) -> torch.Tensor:
    """The lean block over nn.Linear modules: `projections` (the fused gate_up, or gate and up)
    and `down`, their weights and biases passed as LeanGatedMLP.apply takes them."""
    return LeanGatedMLP.apply(
        block,
        x,
        down.weight,
        down.bias,
        *[p.weight for p in projections],
        *[p.bias for p in projections],
    )


def _pack(tensors) -> tuple:
    """(unpack hook or None, packed projections): what a SavedVariable would keep of them,
    through the saved-tensor hooks in effect (activation offloading, checkpointing,
    saved_tensors_hooks), but held on ctx, so that backward can drop them once used (a
    SavedVariable keeps what it holds until the graph is freed)."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if hooks is None:
        return None, list(tensors)
    pack, unpack = hooks
    return unpack, [pack(t) for t in tensors]


def _unpack(ctx) -> list[torch.Tensor]:
    """The projections kept by forward, ctx's references to them dropped."""
    unpack, packed = ctx.packed
    ctx.packed = None
    if unpack is None:
        return packed
    projections = [unpack(p) for p in packed]
    packed.clear()
    return projections


def _in_place(
    dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str, bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """h over dh, the gradients over gate and up, below autograd and its version counting
    (the projections are this function's own intermediates, which nothing else holds), and
    with bias_grad the gradients of the biases they hold (gate's, up's), summed by the same
    pass. torch.compile traces the op itself (its graphs keep their own copies of saved
    tensors)."""
    backend = backends.route(dh.device.type)
    if torch.compiler.is_compiling():
        return backend.gated_backward_in_place(dh, gate, up, activation, bias_grad)
    with torch._C._AutoDispatchBelowADInplaceOrView():
        return backend.gated_backward_in_place(dh, gate, up, activation, bias_grad)


def _grads(
    ctx, dy, x, weights, biases, held, d_projections, bias_grads=None
) -> tuple[torch.Tensor | None, ...]:
    """Step 3: every gradient autograd asks for, from h (the one tensor in `held`) and the
    projections' gradients (`d_projections`), each list emptied as its tensors are used, so that
    they are freed as soon as nothing else holds them; the projections' biases' gradients
    from `bias_grads` where the in-place pass summed them, else from d_projections. The
    weights' gradients are the largest tensors backward allocates; they are taken in the
    order whose peak is lower (see _down_first): usually the projections' first (and x's),
    then the down projection's with h alone left alive."""
    need = ctx.needs_input_grad  # (block, x, w_down, b_down, *weights, *biases)
    n = len(weights)
    dy2, x2 = _flat(dy), _flat(x)
    grads: list[torch.Tensor | None] = [None] * len(need)
    if need[3]:
        grads[3] = dy2.sum(0)
    down_first = _down_first(need, dy2, x2, weights, held[0], d_projections)
    if down_first:
        _down_grad(grads, need, dy2, held)
    dx = None
    for i in range(n):
        d = _flat(d_projections[i])
        d_projections[i] = None
        if need[4 + i]:
            grads[4 + i] = d.t().matmul(x2)
        if need[4 + n + i]:
            grads[4 + n + i] = d.sum(0) if bias_grads is None else bias_grads[i]
        if need[1]:
            if dx is None:
                dx = d.matmul(weights[i])
            elif torch.is_grad_enabled():
                dx = dx.addmm(d, weights[i])
            else:
                dx.addmm_(d, weights[i])
        del d
    d_projections.clear()
    if need[1]:
        grads[1] = dx.reshape(x.shape)
    del dx
    if not down_first:
        _down_grad(grads, need, dy2, held)
    return tuple(grads)


def _down_grad(grads, need, dy2, held) -> None:
    """The down projection's weight gradient, dy^T h; h dropped after."""
    h = held.pop()
    if need[2]:
        grads[2] = dy2.t().matmul(_flat(h))
    del h


def _down_first(need, dy2, x2, weights, h, d_projections) -> bool:
    """Whether backward's peak is lower taking the down projection's weight gradient first
    (h freed before the projections' weight gradients and x's are allocated, while their
    inputs are alive) than last (the projections' gradients freed first, h alone left alive
    when it is allocated). In elements, the activations' counted once per storage: last wins
    while the tokens' activations are smaller than the weights (fewer tokens than the down
    projection has outputs), first beyond. Each gradient in d_projections is a storage of its own
    (one fused projection, or two)."""
    n = len(weights)
    sizes = [d.numel() for d in d_projections]  # one storage each
    down = dy2.shape[1] * h.shape[-1] if need[2] else 0
    dx = x2.numel() if need[1] else 0

    def peak(first: bool) -> int:
        alive = top = h.numel() + sum(sizes)
        if first:
            top = max(top, alive + down)
            alive += down - h.numel()
        for i in range(n):
            alive += weights[i].numel() if need[4 + i] else 0
            top = max(top, alive)
            if i == 0:
                alive += dx
                top = max(top, alive)
            alive -= sizes[i]
        if not first:
            top = max(top, alive + down)
        return top

    return peak(True) < peak(False)
