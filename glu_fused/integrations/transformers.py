"""Hugging Face transformers models with glu_fused's fused GLU activations.

    >>> from glu_fused.integrations import transformers as glu_hf
    >>> glu_hf.patch(model)      # every GLU MLP of the model now calls glu_fused; returns how many
    >>> glu_hf.unpatch(model)    # back to transformers' own code

``patch`` changes modules in place and keeps every parameter as it is: no weight is copied,
moved or renamed, so checkpoints, optimizers, ``device_map`` and ``from_pretrained`` are
unaffected. What it patches:

- MLPs whose forward is LLaMA's, ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``: LLaMA,
  Mistral, Qwen2, Qwen3, Gemma (GeGLU with tanh), Gemma 2/3 and the other models whose MLP
  transformers copies from LLaMA. ``act_fn(gate) * up`` becomes
  ``glu_fused.gated(gate, up, activation)``. A forward counts as LLaMA's when its compiled code
  is ``LlamaMLP.forward``'s, so an MLP that computes anything else is left alone.
- gpt-oss's experts: their ``_apply_gate``, the clamped SwiGLU
  ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``, ``g = clamp(gate, max=limit)``
  of gate and up interleaved in one projection, becomes
  ``glu_fused.clamped_swiglu(gate_up, alpha=alpha, limit=limit, layout="interleaved")``; in
  their eager loop, each expert's ``gate_up_proj_bias`` is added by that kernel too
  (``bias=``), instead of by a pass of its own over the expert's projection.
- Other mixture-of-experts models whose experts use transformers' default ``_apply_gate``,
  ``act_fn(gate) * up`` of the halves of one projection (Qwen2/3-MoE, Mixtral...): the packed
  fused function, e.g. ``glu_fused.swiglu(gate_up)``.

Experts run the fused op wherever transformers calls ``_apply_gate``: in the ``batched_mm``
and ``grouped_mm`` experts implementations (``grouped_mm`` is the default where it runs), and
in gpt-oss's eager loop. The eager loop of the other MoE models computes ``act_fn(gate) * up``
inline and stays as it is: pick ``experts_implementation="batched_mm"`` or ``"grouped_mm"``.

The activation is read off ``act_fn`` by value (``glu_fused.nn.infer_activation``): ``silu``,
``gelu``, ``gelu_pytorch_tanh``/``gelu_new`` (``"gelu_tanh"``), ``relu`` or ``sigmoid``.

transformers is imported only when a model is patched: ``import glu_fused`` never needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import _gated_mlp, functional
from ..nn import _fused_activation, infer_activation

# The instance attribute that marks a patched module: (names of the replaced methods,
# activation, the fused function of a packed projection or None).
_STATE = "_glu_fused"


@dataclass(frozen=True)
class _Patch:
    """What to do to one module: replace each of its methods named in ``methods`` by the
    function given with it (called with the module first)."""

    methods: tuple[tuple[str, Callable], ...]
    activation: str | None


def _fused_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP.forward, ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, with the gate's
    activation and the product in one fused op; where a gradient is wanted, GatedMLP's lean
    block over the model's own two weights (x, gate and up kept for backward, and their
    gradients written over them)."""
    activation = getattr(self, _STATE)[1]
    gate, up, down = self.gate_proj, self.up_proj, self.down_proj
    if _gated_mlp.applies((gate, up, down), x):
        block = _gated_mlp.Block(activation, layout=None)
        return _gated_mlp.apply_linears(block, x, (gate, up), down)
    return down(functional.gated(gate(x), up(x), activation))


def _fused_gpt_oss_apply_gate(
    self: nn.Module, gate_up: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """gpt-oss's GptOssExperts._apply_gate: the clamped SwiGLU of interleaved gate and up
    (of gate_up + bias, the bias added in float32 by the kernel)."""
    return functional.clamped_swiglu(
        gate_up, alpha=self.alpha, limit=self.limit, layout="interleaved", bias=bias
    )


def _fused_gpt_oss_forward(
    self: nn.Module, hidden_states: torch.Tensor, router_indices=None, routing_weights=None
) -> torch.Tensor:
    """GptOssExperts.forward. Its eager loop is transformers' own, line for line, but for
    each expert's gate_up bias, which the fused kernel adds (unfused, ``x @ W + b`` is one
    more pass over the expert's projection, and the bias gradient one more backward). The
    other experts implementations (batched_mm, grouped_mm) gather a bias for each row, which
    the kernel's one bias vector cannot stand for: they run as transformers has them, with
    the patched _apply_gate."""
    implementation = getattr(getattr(self, "config", None), "_experts_implementation", None)
    if implementation not in (None, "eager"):
        return type(self).forward(self, hidden_states, router_indices, routing_weights)
    next_states = torch.zeros_like(hidden_states, dtype=hidden_states.dtype)
    with torch.no_grad():
        expert_mask = nn.functional.one_hot(router_indices, num_classes=self.num_experts)
        expert_mask = expert_mask.permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        expert_idx = expert_idx[0]
        if expert_idx == self.num_experts:
            continue
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        current_state = hidden_states[token_idx]
        gate_up = current_state @ self.gate_up_proj[expert_idx]
        bias = self.gate_up_proj_bias[expert_idx]
        if bias.dtype == gate_up.dtype:
            gated_output = _fused_gpt_oss_apply_gate(self, gate_up, bias)
        else:  # autocast's matmul: the bias promotes the sum, as transformers' code does
            gated_output = self._apply_gate(gate_up + bias)
        out = gated_output @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
        weighted_output = out * routing_weights[token_idx, top_k_pos, None]
        next_states.index_add_(0, token_idx, weighted_output.to(hidden_states.dtype))
    return next_states


def _fused_default_apply_gate(self: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """transformers' default experts gate: act_fn(gate) * up of gate_up's halves."""
    return getattr(self, _STATE)[2](gate_up)


def _same_code(f: object, g: object) -> bool:
    """Whether two functions compile to the same code (names of locals aside): the same
    instructions on the same attribute names and constants."""
    a, b = getattr(f, "__code__", None), getattr(g, "__code__", None)
    if a is None or b is None:
        return False
    return (a.co_argcount, a.co_code, a.co_names, a.co_consts) == (
        b.co_argcount,
        b.co_code,
        b.co_names,
        b.co_consts,
    )


def _transformers_functions() -> dict[str, Callable | None]:
    """The transformers code that a patchable module runs, looked up in the installed
    release (None where that release has none)."""
    try:
        from transformers.models.llama.modeling_llama import LlamaMLP
    except ImportError as error:
        raise ImportError(
            "glu_fused.integrations.transformers needs transformers: "
            "pip install transformers (or glu_fused[hf])"
        ) from error

    found: dict[str, Callable | None] = {"llama_forward": LlamaMLP.forward}
    try:
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

        found["gpt_oss_apply_gate"] = getattr(GptOssExperts, "_apply_gate", None)
        # The eager loop, under transformers' experts-implementation dispatch.
        found["gpt_oss_forward"] = getattr(GptOssExperts.forward, "__wrapped__", None)
    except ImportError:
        found["gpt_oss_apply_gate"] = found["gpt_oss_forward"] = None
    try:
        from transformers.integrations.moe import _default_apply_gate
    except ImportError:
        _default_apply_gate = None
    found["default_apply_gate"] = _default_apply_gate
    return found


def _has_submodules(module: nn.Module, *names: str) -> bool:
    """Any modules, not only nn.Linear: the fused forward calls them as LLaMA's does, so
    quantized or LoRA-wrapped projections (peft) work the same."""
    return all(isinstance(getattr(module, name, None), nn.Module) for name in names)


def _activation_of(module: nn.Module, name: str) -> str:
    try:
        return infer_activation(module.act_fn)
    except ValueError as error:
        what = f"{name} ({type(module).__name__})"
        raise ValueError(f"glu_fused: cannot patch {what}: {error}") from None


def _plan(module: nn.Module, name: str, known: dict[str, Callable | None]) -> _Patch | None:
    """How to patch `module`, or None if it is none of the supported GLU modules."""
    cls = type(module)
    if (
        _same_code(cls.forward, known["llama_forward"])
        and _has_submodules(module, "gate_proj", "up_proj", "down_proj")
        and hasattr(module, "act_fn")
    ):
        return _Patch((("forward", _fused_mlp_forward),), _activation_of(module, name))
    apply_gate = getattr(cls, "_apply_gate", None)
    if apply_gate is None:
        return None
    if _same_code(apply_gate, known["gpt_oss_apply_gate"]):
        methods = [("_apply_gate", _fused_gpt_oss_apply_gate)]
        eager = getattr(cls.forward, "__wrapped__", None)
        if _same_code(eager, known["gpt_oss_forward"]):  # the loop _fused_gpt_oss_forward is
            methods.append(("forward", _fused_gpt_oss_forward))
        return _Patch(tuple(methods), None)
    if apply_gate is known["default_apply_gate"] and hasattr(module, "act_fn"):
        methods = (("_apply_gate", _fused_default_apply_gate),)
        return _Patch(methods, _activation_of(module, name))
    return None


def patch(model: nn.Module) -> int:
    """Makes every supported GLU module of ``model`` compute its activation with glu_fused.

    Returns the number of modules patched by this call (0 when all were patched already).
    Raises ``ValueError``, before changing anything, when ``model`` has no supported GLU
    module or one whose activation glu_fused does not provide, and ``RuntimeError`` when
    something else (accelerate's hooks, another patch) already replaced a method that
    ``patch`` would replace: patch before dispatching the model.
    """
    known = _transformers_functions()
    plans = [
        (name, module, plan)
        for name, module in model.named_modules()
        if (plan := _plan(module, name, known)) is not None
    ]
    if not plans:
        raise ValueError(
            f"glu_fused: {type(model).__name__} has no GLU MLP that glu_fused can patch "
            "(supported: MLPs with LLaMA's forward down_proj(act_fn(gate_proj(x)) * up_proj(x)), "
            "gpt-oss experts, and experts with transformers' default gated activation)"
        )
    todo = [(name, module, plan) for name, module, plan in plans if _STATE not in vars(module)]
    for name, module, plan in todo:
        for method, _ in plan.methods:
            if method in vars(module):
                raise RuntimeError(
                    f"glu_fused: {name} ({type(module).__name__}) already has its own "
                    f"{method} (accelerate's hooks or another patch); patch the model first"
                )
    for _, module, plan in todo:
        for method, replacement in plan.methods:
            # A partial of a module-level function, not a bound method: the module pickles
            # (torch.save(model), multiprocessing's spawn, Ray) and unpickles still patched.
            setattr(module, method, functools.partial(replacement, module))
        packed = None if plan.activation is None else _fused_activation(plan.activation)
        setattr(module, _STATE, (tuple(m for m, _ in plan.methods), plan.activation, packed))
    return len(todo)


def unpatch(model: nn.Module) -> int:
    """Undoes ``patch``: every patched module of ``model`` runs transformers' own code again.
    Returns the number of modules restored (0 for a model that was not patched)."""
    restored = 0
    for module in model.modules():
        state = vars(module).get(_STATE)
        if state is None:
            continue
        for method in state[0]:
            delattr(module, method)
        delattr(module, _STATE)
        restored += 1
    return restored


def is_patched(module: nn.Module) -> bool:
    """Whether ``patch`` replaced this module's activation (the module itself, not its
    children)."""
    return _STATE in vars(module)
