"""The "reference" backend: plain PyTorch, on any device."""

from __future__ import annotations

import torch

from .. import _derivatives, reference


class ReferenceBackend:
    name = "reference"
    family = None

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, device_type: str) -> str | None:
        return None

    def packed(self, x, dim, function, layout, alpha, limit, **rows) -> torch.Tensor:
        return reference.packed(x, dim, function, layout, alpha, limit, **rows)

    def gated(self, gate, value, activation, **rows) -> torch.Tensor:
        return reference.gated(gate, value, activation, **rows)

    def packed_fp8(self, x, dim, function, layout, alpha, limit, *fp8_args, **rows):
        return reference.packed_fp8(x, dim, function, layout, alpha, limit, *fp8_args, **rows)

    def gated_fp8(self, gate, value, activation, *fp8_args, **rows):
        return reference.gated_fp8(gate, value, activation, *fp8_args, **rows)

    def gated_backward_in_place(self, grad_out, gate, value, activation, bias_grad=False):
        return _derivatives.gated_backward_in_place(grad_out, gate, value, activation, bias_grad)
