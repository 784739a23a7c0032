"""The "triton" backend: the portable GPU path (its kernels arrive with the Triton issue)."""

from __future__ import annotations

import importlib.util

import torch


class TritonBackend:
    name = "triton"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
        return "this version of glu_fused has no Triton kernels yet"

    def unsupported_reason(self, device: torch.device) -> str | None:
        if device.type == "cpu":
            return "Triton runs GPU tensors; got a CPU tensor"
        return None

    def packed(self, x, dim, function, interleaved, alpha, limit) -> torch.Tensor:
        raise RuntimeError(f"glu_fused: {self.unavailable_reason()}")

    def gated(self, gate, value, activation) -> torch.Tensor:
        raise RuntimeError(f"glu_fused: {self.unavailable_reason()}")
