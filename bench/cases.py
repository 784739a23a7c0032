"""What the benchmark sweeps: functions, dtypes, directions and shapes, and the bytes each
case moves (docs/contract.md, Speed: every input element read once, every output element written
once)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from glu_fused import _table


@dataclass(frozen=True)
class BenchFunction:
    """One function of the sweep: `api` of glu_fused (and of glu_fused.reference) called with
    `kwargs`, in its default `layout`: halves, but interleaved for clamped_swiglu, as gpt-oss
    packs it. From the table of functions (glu_fused._table)."""

    name: str
    api: str
    kwargs: tuple[tuple[str, str], ...]
    layout: str
    activation: str

    def call_kwargs(self) -> dict[str, str]:
        return dict(self.kwargs)


FUNCTIONS: dict[str, BenchFunction] = {
    f.name: BenchFunction(f.name, f.public, f.options, f.layout, f.activation.name)
    for f in _table.PACKED_FUNCTIONS.values()
}

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}

# forward: y = f(x) without autograd (inference); backward: the backward pass alone;
# forward+backward: a training step's share, y = f(x) then the input gradient.
DIRECTIONS = ("forward", "backward", "forward+backward")


@dataclass(frozen=True)
class Sweep:
    """The grid: every function x dtype x (tokens, hidden) shape, input [tokens, 2 * hidden]."""

    functions: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    directions: tuple[str, ...] = DIRECTIONS

    def cases(self) -> list[Case]:
        """Grouped by function, dtype and hidden size: each group shares one torch.compile."""
        return [
            Case(FUNCTIONS[f], d, tokens, hidden)
            for f, d, (hidden, tokens) in itertools.product(
                self.functions, self.dtypes, sorted((h, t) for t, h in self.shapes)
            )
        ]


# Hidden sizes of real models: LLaMA-2 7B (11008), LLaMA-3 8B / Mistral 7B (14336),
# LLaMA-3 70B (28672); 4096 as a round one. Tokens from a decode step to a long prefill; a
# one-token input of hidden 4096 is under 1 MiB (launch latency).
GPU_TOKENS = (1, 16, 128, 1024, 4096, 16384, 32768)
GPU_HIDDEN = (4096, 11008, 14336, 28672)
# The CPU sweep ends in about two minutes on two cores.
CPU_TOKENS = (1, 64, 1024)
CPU_HIDDEN = (4096,)


def default_sweep(device: torch.device, quick: bool) -> Sweep:
    """The full or the quick grid for `device`."""
    functions = tuple(FUNCTIONS)
    if device.type == "cpu":
        if quick:
            return Sweep(functions, ("float32",), ((1, 4096), (512, 4096)))
        return Sweep(functions, ("bfloat16", "float32"), _grid(CPU_TOKENS, CPU_HIDDEN))
    if quick:
        return Sweep(functions, ("bfloat16",), _grid((1, 1024, 16384), (4096, 14336)))
    return Sweep(functions, tuple(DTYPES), _grid(GPU_TOKENS, GPU_HIDDEN))


def _grid(tokens: tuple[int, ...], hidden: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(itertools.product(tokens, hidden))


def parse_shape(text: str) -> tuple[int, int]:
    """'TOKENSxHIDDEN' (e.g. '1024x4096': an input of [1024, 8192]) as (tokens, hidden)."""
    try:
        tokens, hidden = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a size is TOKENSxHIDDEN, e.g. 1024x4096; got {text!r}") from None
    if tokens < 1 or hidden < 1:
        raise ValueError(f"tokens and hidden must be positive; got {text!r}")
    return tokens, hidden


@dataclass(frozen=True)
class Case:
    """A function on one dtype and shape: input [tokens, 2 * hidden], output [tokens, hidden]."""

    function: BenchFunction
    dtype: str
    tokens: int
    hidden: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.tokens, 2 * self.hidden

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.tokens, self.hidden

    @property
    def input_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        return self.tokens * 2 * self.hidden * itemsize

    def bytes_moved(self, direction: str) -> int:
        """forward reads x and writes y (half of x); backward reads x and grad_y and writes
        grad_x; forward+backward is the two together."""
        x, y = self.input_bytes, self.input_bytes // 2
        forward, backward = x + y, x + y + x
        return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[
            direction
        ]

    @property
    def label(self) -> str:
        return f"{self.function.name} {self.dtype} {self.tokens}x{self.hidden}"
