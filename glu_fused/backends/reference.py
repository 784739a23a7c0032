"""The "reference" backend: plain PyTorch, on any device."""

from __future__ import annotations

import torch

from .. import reference


class ReferenceBackend:
    name = "reference"

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, device: torch.device) -> str | None:
        return None

    def packed(self, x, dim, function, interleaved, alpha, limit) -> torch.Tensor:
        return reference.packed(x, dim, function, interleaved, alpha, limit)

    def gated(self, gate, value, activation) -> torch.Tensor:
        return reference.gated_unchecked(gate, value, activation)
