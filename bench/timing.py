"""Honest timing: CUDA events on a GPU, the monotonic perf_counter on the CPU; warm-up, then
the median of many samples, each a batch of calls long enough for the clock; inputs rotated
when one set would stay in the cache between calls; the contenders interleaved round by round
so that drift and load from elsewhere fall on all of them alike.

On a GPU each contender gets two times: per eager call (`time_interleaved`: the calls as a
training loop makes them, the host's work included, so a call whose host time exceeds its
kernel's is timed at its host time) and kernel time (`time_in_graphs`: many calls captured
in one CUDA graph and replayed, which leaves the GPU's work alone)."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

Step = Callable[[int], object]  # runs one call on input set i


@dataclass(frozen=True)
class TimingPlan:
    """How long to time: samples of at least `sample_ms`; between `min_rounds` and
    `max_rounds` rounds, as many as fit in `budget_s` per measurement."""

    sample_ms: float
    min_rounds: int
    max_rounds: int
    budget_s: float
    warmup_calls: int = 3


GPU_PLAN = TimingPlan(sample_ms=1.0, min_rounds=10, max_rounds=50, budget_s=0.6)
CPU_PLAN = TimingPlan(sample_ms=2.0, min_rounds=5, max_rounds=15, budget_s=0.4)


def plan_for(device: torch.device) -> TimingPlan:
    return CPU_PLAN if device.type == "cpu" else GPU_PLAN


class Clock:
    """Elapsed milliseconds of a stretch of work queued on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, work: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        work()
        return (time.perf_counter() - begin) * 1e3


def cache_bytes(device: torch.device) -> int:
    """The last-level cache a repeated input could stay in: the GPU's L2, the CPU's L3
    (L2 when there is no L3); 32 MiB if neither is known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    for level in ("index3", "index2"):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/{level}/size")
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 32 * 2**20


MAX_INPUT_SETS = 64


def input_sets_needed(bytes_per_call: int, cache: int) -> int:
    """Input sets to rotate so that a call's inputs were last touched at least twice the
    cache's size ago: 1 when one set already exceeds it; at most MAX_INPUT_SETS (the
    smallest inputs are bound by launch latency, not by memory, anyway)."""
    return max(1, min(MAX_INPUT_SETS, math.ceil(2 * cache / max(bytes_per_call, 1))))


def time_interleaved(
    steps: dict[str, Step],
    contexts: dict[str, Callable[[], AbstractContextManager[object]]],
    n_sets: int,
    clock: Clock,
    plan: TimingPlan,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per contender: ms per call of each sample, and the calls per sample.

    Each sample runs a batch of calls over the rotating input sets inside the contender's
    context, timed as one stretch; a round takes one sample of every contender.
    """
    calls_per_sample: dict[str, int] = {}
    if not steps:
        return {}, calls_per_sample
    round_ms = 0.0
    for name, step in steps.items():
        with contexts[name]():
            for i in range(plan.warmup_calls):
                step(i % n_sets)
            clock.synchronize()
            estimate = clock.measure(lambda step=step: [step(i % n_sets) for i in range(3)]) / 3
        calls = max(1, min(1000, math.ceil(plan.sample_ms / max(estimate, 1e-4))))
        calls_per_sample[name] = calls
        round_ms += calls * estimate
    rounds = int(min(plan.max_rounds, max(plan.min_rounds, plan.budget_s * 1e3 / round_ms)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    position = dict.fromkeys(steps, 0)
    for _ in range(rounds):
        for name, step in steps.items():
            calls, first = calls_per_sample[name], position[name]

            def batch(step: Step = step, calls: int = calls, first: int = first) -> None:
                for i in range(first, first + calls):
                    step(i % n_sets)

            with contexts[name]():
                samples[name].append(clock.measure(batch) / calls)
            position[name] = (first + calls) % n_sets
    return samples, calls_per_sample


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def copy_bandwidth(device: torch.device, plan: TimingPlan) -> dict[str, float]:
    """GB/s of `dst.copy_(src)` over a buffer far larger than the cache (bytes read plus bytes
    written, per docs/contract.md's count): the ceiling the kernels are held against."""
    nbytes = max(8 * cache_bytes(device), (1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    steps: dict[str, Step] = {"copy": lambda _: dst.copy_(src)}
    samples, _ = time_interleaved(steps, {"copy": contextlib.nullcontext}, 1, Clock(device), plan)
    ms = median(samples["copy"])
    return {"bytes": float(2 * nbytes), "median_ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6}


# Calls captured in one CUDA graph: enough to amortize the replay's launch, at most this much
# memory of results kept alive by the graph's pool.
GRAPH_CALLS = 20
GRAPH_MEMORY_BYTES = 4 << 30


def graph_calls(bytes_per_call: int) -> int:
    return max(1, min(GRAPH_CALLS, GRAPH_MEMORY_BYTES // max(bytes_per_call, 1)))


def capture(step: Step, n_sets: int, calls: int) -> torch.cuda.CUDAGraph:
    """`calls` calls of `step` over the input sets, captured in a CUDA graph after warm-up
    on a side stream (as torch.cuda.graph requires of code that allocates or runs autograd)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            step(i % n_sets)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            step(i % n_sets)
    return graph


def time_in_graphs(
    steps: dict[str, Step],
    contexts: dict[str, Callable[[], AbstractContextManager[object]]],
    n_sets: int,
    calls: int,
    plan: TimingPlan,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per contender, the kernel time per call of each sample (one replay of its graph of
    `calls` calls), the contenders' replays interleaved round by round; and why a contender
    could not be captured."""
    graphs: dict[str, torch.cuda.CUDAGraph] = {}
    failed: dict[str, str] = {}
    for name, step in steps.items():
        try:
            with contexts[name]():
                graphs[name] = capture(step, n_sets, calls)
        except Exception as error:  # a contender that cannot be captured keeps its eager time
            failed[name] = f"not captured: {type(error).__name__}: {' '.join(str(error).split())}"[
                :300
            ]
            torch.cuda.synchronize()
    clock = Clock(torch.device("cuda"))
    samples: dict[str, list[float]] = {name: [] for name in graphs}
    for graph in graphs.values():
        graph.replay()
    clock.synchronize()
    rounds = max(plan.min_rounds, min(plan.max_rounds, 20))
    for _ in range(rounds):
        for name, graph in graphs.items():
            samples[name].append(clock.measure(graph.replay) / calls)
    return samples, failed
