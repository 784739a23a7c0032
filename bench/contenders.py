"""The contenders: each of our backends that runs natively on the device, and the peers, the
code users would run instead:

- "eager": what users write in PyTorch, in the input's dtype: `F.glu(x)` for glu (so F.glu is
  this peer), `F.silu(gate) * up` (LLaMA, Mistral, Qwen), `F.gelu(gate) * up`,
  `F.gelu(gate, approximate="tanh") * up` (Gemma), `F.relu(gate) * up`, and gpt-oss's clamped
  SwiGLU as transformers writes it (`GptOssExperts._apply_gate`);
- "compile": torch.compile of that code;
- "liger": Liger-Kernel where it is importable and has the function (GPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from cases import BenchFunction
from report import OURS_PREFIX

import glu_fused
from glu_fused import _table
from glu_fused.backends import BACKENDS

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Contender:
    """`fn` computes the case's function on a packed [tokens, 2 * hidden] tensor, inside
    `context()` (ours: the backend forced)."""

    name: str
    fn: Fn
    context: Callable[[], AbstractContextManager[object]] = field(default=contextlib.nullcontext)

    @property
    def is_ours(self) -> bool:
        return self.name.startswith(OURS_PREFIX)


def native_backends(device: torch.device) -> list[str]:
    """Our compiled backends that run `device`'s tensors natively: Triton's interpreter on
    the CPU is a test vehicle, not a contender."""
    names = []
    for name, backend in BACKENDS.items():
        if name == "reference" or (name == "triton" and device.type == "cpu"):
            continue
        if backend.unavailable_reason() is None and backend.unsupported_reason(device.type) is None:
            names.append(name)
    return names


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _ours(function: BenchFunction, backend: str) -> Contender:
    api = getattr(glu_fused, function.api)
    kwargs = function.call_kwargs()
    return Contender(
        OURS_PREFIX + backend, lambda x: api(x, **kwargs), lambda: glu_fused.use_backend(backend)
    )


def gpt_oss_apply_gate(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """transformers' GptOssExperts._apply_gate, line for line (tests/test_bench.py holds the
    two equal where transformers is installed)."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    glu = gate * torch.sigmoid(gate * alpha)
    gated_output = (up + 1) * glu
    return gated_output


def user_code(function: BenchFunction) -> Fn:
    """The function as PyTorch users write it, in the input's dtype (see the module's
    docstring)."""
    if function.name == "glu":
        return lambda x: F.glu(x, -1)
    if function.name == "clamped_swiglu":
        alpha, limit = _table.DEFAULT_ALPHA, _table.DEFAULT_LIMIT
        return lambda x: gpt_oss_apply_gate(x, alpha, limit)
    act = _table.ACTIVATIONS[function.activation].torch_form

    def gated(x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return act(gate) * up

    return gated


def _compiled(function: BenchFunction) -> Fn:
    """torch.compile of the user's code with the token dim dynamic: one compile per function,
    dtype and hidden size, as a training run with varying sequence lengths gets."""
    compiled = torch.compile(user_code(function))

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:  # a marked size-1 dim would send dynamo back to tracing each call
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return compiled(x)

    return run


def _liger(function: BenchFunction) -> Fn | None:
    """Liger-Kernel's op for `function` on a packed halves tensor, or None if it has none.

    SwiGLU has a fused gate-up op that reads both halves in place; GeGLU (tanh only) takes
    the halves as two tensors, which Liger makes contiguous, as its users pay.
    """
    if function.name == "swiglu":
        from liger_kernel.ops.swiglu import LigerFusedGateUpSiLUMulFunction

        return lambda x: LigerFusedGateUpSiLUMulFunction.apply(x, False)
    if function.name == "geglu_tanh":
        from liger_kernel.ops.geglu import LigerGELUMulFunction

        return lambda x: LigerGELUMulFunction.apply(*x.chunk(2, dim=-1))
    return None


PEERS = ("eager", "compile", "liger")


def make_contenders(
    function: BenchFunction, device: torch.device, wanted: set[str] | None = None
) -> list[Contender]:
    """Every contender for `function` on `device` (or those named in `wanted`: ours:<backend>,
    eager, compile, liger). Build them afresh for each function, dtype and hidden size: the
    compiled one keeps its graphs."""
    ours_names = native_backends(device)
    if wanted is not None:  # a backend asked for by name runs even off its native device
        ours_names = [n for n in BACKENDS if n != "reference" and OURS_PREFIX + n in wanted]
    contenders = [_ours(function, name) for name in ours_names]
    contenders.append(Contender("eager", user_code(function)))
    contenders.append(Contender("compile", _compiled(function)))
    liger_wanted = device.type == "cuda" if wanted is None else "liger" in wanted
    if liger_wanted and liger_available():
        liger = _liger(function)
        if liger is not None:
            contenders.append(Contender("liger", liger))
    if wanted is not None:
        contenders = [c for c in contenders if c.name in wanted]
    return contenders
