"""What every backend provides."""

from __future__ import annotations

from typing import Protocol

import torch

from .. import _ops


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None if this process can use the backend, else why not (not built, no GPU...)."""

    def unsupported_reason(self, device: torch.device) -> str | None:
        """None if the backend runs tensors on `device`, else why not."""

    def packed(
        self,
        x: torch.Tensor,
        dim: int,
        function: str,
        interleaved: bool,
        alpha: float,
        limit: float,
    ) -> torch.Tensor:
        """A packed function (reference.PACKED_FUNCTIONS) of `x`, `dim` checked and >= 0."""

    def gated(self, gate: torch.Tensor, value: torch.Tensor, activation: str) -> torch.Tensor:
        """act(gate) * value, arguments checked."""


class OpsBackend:
    """A backend whose kernels are implementations of a pair of torch.library op families
    (_ops.define_families): the ops carry autograd, vmap and torch.compile support."""

    name: str
    packed_family: _ops.OpFamily
    gated_family: _ops.OpFamily

    def packed(self, x, dim, function, interleaved, alpha, limit) -> torch.Tensor:
        return _ops.apply(self.packed_family, x, dim, function, interleaved, alpha, limit)

    def gated(self, gate, value, activation) -> torch.Tensor:
        return _ops.apply(self.gated_family, gate, value, activation)
