"""What every backend provides."""

from __future__ import annotations

from typing import Protocol

import torch

from .._extension import _C

if _C is not None:  # the ops' Python side: vmap rules, second order, transforms
    from .. import _ops


class Backend(Protocol):
    name: str
    # The op family whose ops the backend's calls run ("native", "triton"; glu_fused/_ops.py),
    # which the extension's fast calls then reach directly; None where there are no ops.
    family: str | None

    def unavailable_reason(self) -> str | None:
        """None if this process can use the backend, else why not (not built, no GPU...)."""

    def unsupported_reason(self, device_type: str) -> str | None:
        """None if the backend runs tensors of `device_type`, else why not."""

    def packed(
        self, x: torch.Tensor, dim: int, function: str, layout: str, alpha: float, limit: float
    ) -> torch.Tensor:
        """The glu_forward op's call: `function` (glu_fused._table.PACKED_FUNCTIONS) of x."""

    def gated(self, gate: torch.Tensor, value: torch.Tensor, activation: str) -> torch.Tensor:
        """The gated_forward op's call: act(gate) * value."""

    def packed_fp8(
        self,
        x: torch.Tensor,
        dim: int,
        function: str,
        layout: str,
        alpha: float,
        limit: float,
        *fp8_args,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The glu_forward_fp8 op's call: (q, scale); fp8_args as glu_fused._fp8.Fp8Args
        and the static scale."""

    def gated_fp8(
        self, gate: torch.Tensor, value: torch.Tensor, activation: str, *fp8_args
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated_forward_fp8 op's call: (q, scale)."""

    def gated_backward_in_place(
        self, grad_out: torch.Tensor, gate: torch.Tensor, value: torch.Tensor, activation: str
    ) -> None:
        """The gated_backward_in_place op's call: act(gate) * value over grad_out, the
        gradients over gate and value (GatedMLP's backward)."""


class OpsBackend:
    """A backend whose kernels implement an op family: its ops carry autograd, vmap and
    torch.compile support. Under forward-mode AD and torch.func transforms its calls go
    through the family's autograd.Function (glu_fused/_ops.py)."""

    name: str
    family: str

    def packed(self, x, dim, function, layout, alpha, limit) -> torch.Tensor:
        ops = _ops.PACKED[self.family]
        if _ops.transforms_active():
            return _ops.FusedFunction.apply(ops, x, dim, function, layout, alpha, limit)
        return ops.forward(x, dim, function, layout, alpha, limit)

    def gated(self, gate, value, activation) -> torch.Tensor:
        ops = _ops.GATED[self.family]
        if _ops.transforms_active():
            return _ops.FusedFunction.apply(ops, gate, value, activation)
        return ops.forward(gate, value, activation)

    def packed_fp8(self, x, dim, function, layout, alpha, limit, *fp8_args):
        return _ops.FP8[self.family][0](x, dim, function, layout, alpha, limit, *fp8_args)

    def gated_fp8(self, gate, value, activation, *fp8_args):
        return _ops.FP8[self.family][1](gate, value, activation, *fp8_args)

    def gated_backward_in_place(self, grad_out, gate, value, activation) -> None:
        _ops.GATED[self.family].backward_in_place(grad_out, gate, value, activation)
