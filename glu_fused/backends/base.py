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
        self,
        x: torch.Tensor,
        dim: int,
        function: str,
        layout: str,
        alpha: float,
        limit: float,
        bias: torch.Tensor | None = None,
        valid_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The glu_forward op's call: `function` (glu_fused._table.PACKED_FUNCTIONS) of x,
        with its bias and token counts (docs/contract.md, "Bias and token counts")."""

    def gated(
        self,
        gate: torch.Tensor,
        value: torch.Tensor,
        activation: str,
        gate_bias: torch.Tensor | None = None,
        value_bias: torch.Tensor | None = None,
        valid_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gated_forward op's call: act(gate + gate_bias) * (value + value_bias)."""

    def packed_fp8(
        self,
        x: torch.Tensor,
        dim: int,
        function: str,
        layout: str,
        alpha: float,
        limit: float,
        *fp8_args,
        bias: torch.Tensor | None = None,
        valid_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The glu_forward_fp8 op's call: (q, scale); fp8_args as glu_fused._fp8.Fp8Args
        and the static scale."""

    def gated_fp8(
        self,
        gate: torch.Tensor,
        value: torch.Tensor,
        activation: str,
        *fp8_args,
        gate_bias: torch.Tensor | None = None,
        value_bias: torch.Tensor | None = None,
        valid_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated_forward_fp8 op's call: (q, scale)."""

    def gated_backward_in_place(
        self,
        grad_out: torch.Tensor,
        gate: torch.Tensor,
        value: torch.Tensor,
        activation: str,
        bias_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The gated_backward_in_place op's call: act(gate) * value over grad_out, the
        gradients over gate and value (GatedMLP's backward). With bias_grad
        (gated_backward_in_place_bias), also the gradients of the biases that gate and value
        hold, summed over their rows in the same pass: (d gate_bias, d value_bias)."""


class OpsBackend:
    """A backend whose kernels implement an op family: its ops carry autograd, vmap and
    torch.compile support. Under forward-mode AD and torch.func transforms its calls go
    through the family's autograd.Function (glu_fused/_ops.py)."""

    name: str
    family: str

    def packed(
        self, x, dim, function, layout, alpha, limit, bias=None, valid_tokens=None
    ) -> torch.Tensor:
        ops = _ops.PACKED[self.family]
        if _ops.transforms_active():
            # Forward-mode AD and torch.func: the bias added by PyTorch (its tangent and
            # batching are then PyTorch's), the op given the sum (see _ops.add_bias).
            z = _ops.add_bias(x, bias)
            out = _ops.FusedFunction.apply(
                ops, z, dim, function, layout, alpha, limit, None, valid_tokens
            )
            return out.to(x.dtype)
        return ops.forward(x, dim, function, layout, alpha, limit, bias, valid_tokens)

    def gated(
        self, gate, value, activation, gate_bias=None, value_bias=None, valid_tokens=None
    ) -> torch.Tensor:
        ops = _ops.GATED[self.family]
        if _ops.transforms_active():
            dtype = gate.dtype
            if gate_bias is not None or value_bias is not None:
                gate = _ops.add_bias(gate, gate_bias, compute_type=True)
                value = _ops.add_bias(value, value_bias, compute_type=True)
            out = _ops.FusedFunction.apply(ops, gate, value, activation, None, None, valid_tokens)
            return out.to(dtype)
        return ops.forward(gate, value, activation, gate_bias, value_bias, valid_tokens)

    def packed_fp8(
        self, x, dim, function, layout, alpha, limit, *fp8_args, bias=None, valid_tokens=None
    ):
        packed = _ops.FP8[self.family][0]
        return packed(
            x, dim, function, layout, alpha, limit, *fp8_args, bias=bias, valid_tokens=valid_tokens
        )

    def gated_fp8(
        self,
        gate,
        value,
        activation,
        *fp8_args,
        gate_bias=None,
        value_bias=None,
        valid_tokens=None,
    ):
        gated = _ops.FP8[self.family][1]
        return gated(
            gate,
            value,
            activation,
            *fp8_args,
            gate_bias=gate_bias,
            value_bias=value_bias,
            valid_tokens=valid_tokens,
        )

    def gated_backward_in_place(self, grad_out, gate, value, activation, bias_grad=False):
        ops = _ops.GATED[self.family]
        if bias_grad:
            return ops.backward_in_place_bias(grad_out, gate, value, activation)
        ops.backward_in_place(grad_out, gate, value, activation)
        return None
