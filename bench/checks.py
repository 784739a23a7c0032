"""Before any timing: every contender's output and input gradient against the float64
reference (so a wrong kernel cannot win), and the peak memory of its forward plus backward."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from cases import Case

from glu_fused import reference
from glu_fused.testing import TOLERANCES

# Ours must meet TOLERANCES (glu_fused.testing, the promised accuracy). Peers are held to the
# looser of that and torch.testing's defaults: a peer that rounds twice in bfloat16 is not wrong.
PEER_TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
CHUNK_BYTES = 256 << 20  # float64 rows compared at a time: bounds the check's memory


def tolerance(dtype: torch.dtype, ours: bool) -> tuple[float, float]:
    return (TOLERANCES if ours else PEER_TOLERANCES)[dtype]


def _first_mismatch(
    what: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float
) -> str | None:
    actual = actual.double()
    bad = ~((actual - expected).abs() <= atol + rtol * expected.abs())
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (
        f"{what}: {int(bad.sum())} of {bad.numel()} elements outside rtol={rtol}, atol={atol}; "
        f"first at {index}: {float(actual[index])!r} vs reference {float(expected[index])!r}"
    )


def mismatch(
    case: Case,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    out: torch.Tensor,
    grad_x: torch.Tensor,
    tol: tuple[float, float],
) -> str | None:
    """None if `out` and `grad_x` agree with the float64 reference, else what differs.

    Rows are independent, so the reference runs on row chunks of bounded size.
    """
    if out.shape != case.output_shape or out.dtype != x.dtype:
        return f"result of shape {tuple(out.shape)} and {out.dtype}"
    api = getattr(reference, case.function.api)
    kwargs = case.function.call_kwargs()
    rows = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    for start in range(0, x.shape[0], rows):
        part = slice(start, start + rows)
        x64 = x[part].detach().double().requires_grad_()
        out64 = api(x64, **kwargs)
        (grad64,) = torch.autograd.grad(out64, x64, grad_out[part].double())
        why = _first_mismatch("output", out[part], out64.detach(), *tol) or _first_mismatch(
            "input gradient", grad_x[part], grad64, *tol
        )
        if why is not None:
            return why
    return None


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
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and "Total Allocated" in e["args"]),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    totals = [e["args"]["Total Allocated"] for e in memory]
    before = totals[0] - memory[0]["args"]["Bytes"]
    return max(0, max(totals) - before)
