"""Host time per call on a tiny tensor: what a call costs beyond its arithmetic, against the
PyTorch code it replaces. Where inputs are small (decode batches, MoE experts, small
fine-tuning) this is the whole cost on a GPU.

Side by side in one process: every round times a batch of calls of each contender in turn,
and each figure is the median over the rounds of microseconds per call. The bars:
forward without grad at most 1.3x F.glu's host time; forward with grad and forward plus
backward at most 1.5x; swiglu no slower than the three-op eager SwiGLU.

    python bench/overhead.py                      # CPU, one thread, [2, 16] float32
    python bench/overhead.py --device cuda        # host time of calls on the GPU
    python bench/overhead.py --out bench/results/cpu-amd-epyc-avx2/overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import glu_fused


@dataclass(frozen=True)
class Row:
    """One line of the table: PyTorch's call and ours, and the largest ratio allowed."""

    call: str
    peer: Callable[[], object]
    ours: Callable[[], object]
    bar: float


def eager_swiglu(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU as users write it: three ops."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rows(x: torch.Tensor) -> list[Row]:
    plain = x.detach()
    leaf = x.detach().clone().requires_grad_()

    def backward_of(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        return lambda: f(leaf).sum().backward()

    return [
        Row(
            "glu forward, no grad (`F.glu`)",
            lambda: F.glu(plain),
            lambda: glu_fused.glu(plain),
            1.3,
        ),
        Row(
            "glu forward, input requires grad",
            lambda: F.glu(leaf),
            lambda: glu_fused.glu(leaf),
            1.5,
        ),
        Row(
            "glu forward + `.sum().backward()`", backward_of(F.glu), backward_of(glu_fused.glu), 1.5
        ),
        Row(
            "swiglu forward, no grad (eager `silu(a) * b`, three ops)",
            lambda: eager_swiglu(plain),
            lambda: glu_fused.swiglu(plain),
            1.0,
        ),
        Row(
            "swiglu forward + backward (eager, three ops)",
            backward_of(eager_swiglu),
            backward_of(glu_fused.swiglu),
            1.0,
        ),
    ]


def host_microseconds(
    calls: dict[str, Callable[[], object]], device: torch.device, batch: int, rounds: int
) -> dict[str, float]:
    """Median over rounds of the host time per call, the contenders interleaved in each
    round. On a GPU the queue is drained before each batch and not waited for after it: the
    time is the host's, not the kernels'."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for call in calls.values():
        for _ in range(max(batch // 4, 10)):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            for _ in range(batch):
                call()
            samples[name].append((time.perf_counter() - start) / batch * 1e6)
    sync()
    return {name: statistics.median(times) for name, times in samples.items()}


def table(results: list[tuple[Row, float, float]]) -> str:
    lines = [
        "| call | PyTorch | glu_fused | ratio | bar |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row, peer, ours in results:
        ratio = ours / peer
        verdict = "met" if ratio <= row.bar else "NOT met"
        lines.append(
            f"| {row.call} | {peer:.1f} us | {ours:.1f} us | {ratio:.2f}x | "
            f"<= {row.bar:g}x: {verdict} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="2x16", help="the input's shape, e.g. 2x16")
    parser.add_argument("--batch", type=int, default=1000, help="calls per timed batch")
    parser.add_argument("--rounds", type=int, default=31, help="batches per contender")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = tuple(int(n) for n in args.shape.split("x"))
    x = torch.randn(shape, device=device)
    results = []
    for row in rows(x):
        times = host_microseconds(
            {"peer": row.peer, "ours": row.ours}, device, args.batch, args.rounds
        )
        results.append((row, times["peer"], times["ours"]))
    backend = glu_fused.backends.route(device.type).name
    heading = (
        f"Host time per call, median of {args.rounds} rounds of {args.batch} calls, "
        f"{list(shape)} float32 on {device} ({torch.get_num_threads()} thread(s)), "
        f"glu_fused backend {backend!r}, torch {torch.__version__}"
    )
    text = f"{heading}\n\n{table(results)}\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
