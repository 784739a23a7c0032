"""Before any timing: every contender's results against the float64 reference, with its
error reported (so a wrong kernel cannot win, and accuracy shows beside speed), and the peak
memory of its forward plus backward.

Ours must meet the accuracy glu_fused promises (glu_fused.testing.TOLERANCES). A peer is left
out only for a wrong result, beyond torch.testing's default tolerance for its dtype, never
for being less accurate than ours; and only from the directions whose results are wrong.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from cases import Case

from glu_fused import reference
from glu_fused.testing import TOLERANCES

# torch.testing.assert_close's defaults, (rtol, atol) per dtype.
TORCH_TESTING_TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
CHUNK_BYTES = 256 << 20  # float64 rows compared at a time: bounds the check's memory


def tolerance(dtype: torch.dtype, ours: bool) -> tuple[float, float]:
    return (TOLERANCES if ours else TORCH_TESTING_TOLERANCES)[dtype]


@dataclass
class Error:
    """How far a result lies from the float64 reference.

    `bound_ratio`: the worst |err| / (atol + rtol |ref|) with glu_fused's own (rtol, atol)
    for the dtype, so 1 is the edge of what glu_fused promises, for every contender alike.
    `wrong`: None, or the first element outside the tolerance the contender is held to.
    """

    max_abs: float = 0.0
    max_rel: float = 0.0
    bound_ratio: float = 0.0
    wrong: str | None = None

    def merge(self, other: Error) -> Error:
        return Error(
            max(self.max_abs, other.max_abs),
            max(self.max_rel, other.max_rel),
            max(self.bound_ratio, other.bound_ratio),
            self.wrong or other.wrong,
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _largest(t: torch.Tensor) -> float:
    """The largest element, inf if any is NaN, 0 for none."""
    if not t.numel():
        return 0.0
    return float("inf") if bool(t.isnan().any()) else float(t.max())


def error_of(
    what: str, actual: torch.Tensor, expected: torch.Tensor, held_to: tuple[float, float]
) -> Error:
    """`actual` against `expected` (float64); a NaN on one side only is infinitely far."""
    got = actual.double()
    both_nan = got.isnan() & expected.isnan()
    diff = torch.where(both_nan, 0.0, (got - expected).abs())
    rtol, atol = TOLERANCES[actual.dtype]
    nonzero = expected.abs() > 0
    error = Error(
        max_abs=_largest(diff),
        max_rel=_largest(diff[nonzero] / expected[nonzero].abs()),
        bound_ratio=_largest(diff / (atol + rtol * expected.abs())),
    )
    rtol, atol = held_to
    bad = ~(diff <= atol + rtol * expected.abs())
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        error.wrong = (
            f"{what}: {int(bad.sum())} of {bad.numel()} elements outside rtol={rtol}, "
            f"atol={atol}; first at {index}: {float(got[index])!r} vs reference "
            f"{float(expected[index])!r}"
        )
    return error


def errors(
    case: Case,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    outputs: list[torch.Tensor],
    grad_x: torch.Tensor,
    held_to: tuple[float, float],
) -> dict[str, Error]:
    """{"forward": the worst of `outputs` (one per timed mode: without and with autograd),
    "gradient": `grad_x`} against the float64 reference, compared in row chunks."""
    api = getattr(reference, case.function.api)
    kwargs = case.function.call_kwargs()
    rows = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    found = {"forward": Error(), "gradient": Error()}
    for start in range(0, x.shape[0], rows):
        part = slice(start, start + rows)
        x64 = x[part].detach().double().requires_grad_()
        out64 = api(x64, **kwargs)
        (grad64,) = torch.autograd.grad(out64, x64, grad_out[part].double())
        for out in outputs:
            found["forward"] = found["forward"].merge(
                error_of("output", out[part], out64.detach(), held_to)
            )
        found["gradient"] = found["gradient"].merge(
            error_of("input gradient", grad_x[part], grad64, held_to)
        )
    return found


def peak_memory_bytes(step: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by `step` beyond what was allocated before it: the CUDA caching
    allocator's statistics on a GPU; on the CPU, the running total the profiler's memory
    events record. None where neither is to be had."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    if device.type == "cpu":
        return _cpu_peak_bytes(step)
    return None


def _cpu_peak_bytes(step: Callable[[], object]) -> int | None:
    timeline, _ = cpu_memory_timeline(step)
    return max(0, max(total for _, total in timeline) - timeline[0][1]) if timeline else 0


def cpu_memory_timeline(
    step: Callable[[], object], mark: str | None = None
) -> tuple[list[tuple[float, int]], float | None]:
    """(time in us, bytes allocated) at the start of `step` and after each allocation or free
    in it, from the profiler's memory events (which track only what was allocated while it
    ran, so `step` should free nothing allocated before it); and the time at which `step`
    entered torch.profiler.record_function(mark), if it did."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    marked = min((e["ts"] for e in events if mark and e.get("name") == mark), default=None)
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and "Total Allocated" in e["args"]),
        key=lambda e: e["ts"],
    )
    if not memory:
        return [], marked
    start = (memory[0]["ts"], memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"])
    return [start, *((e["ts"], e["args"]["Total Allocated"]) for e in memory)], marked
