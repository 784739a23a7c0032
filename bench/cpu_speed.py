"""CPU speed of glu_fused's C++ kernels against the PyTorch peers (SPEC, Performance).

What it measures: for each packed function (glu, swiglu, geglu with approximate="none", reglu,
clamped_swiglu; all with layout="halves" so that F.glu compares), each dtype and each input size,
the wall time of

  * forward:  ``y = fn(x)``
  * backward: the backward pass alone, ``torch.autograd.grad(y, x, grad_y, retain_graph=True)``
    after one untimed forward with ``x.requires_grad_()``

for these contenders:

  * ``ours``:     ``glu_fused.<fn>(x)`` under ``glu_fused.use_backend("cpu")`` (the C++ kernels)
  * ``F.glu``:    ``torch.nn.functional.glu(x, -1)``, for glu only
  * ``eager``:    ``glu_fused.reference.<fn>(x)``, the plain PyTorch reference
  * ``compile``:  ``torch.compile(reference.<fn>, dynamic=False)``, compiled afresh for each
    function, dtype and size (inductor's CPU backend)

How: the input is ``randn`` of shape ``[tokens, 2 * 4096]`` with ``tokens`` chosen so that the
input tensor takes the requested MiB. Before any timing, every contender's output (and, for the
backward, its input gradient) is checked against ours with ``torch.testing.assert_close``
(rtol = atol = 2e-2), and a contender that disagrees is left out of the comparison, so a wrong
peer cannot win. Each timing is ``time.perf_counter`` around one call. The contenders are timed
in interleaved rounds (every contender once per round; 3 warm-up rounds, then the timed ones) so
that load from other processes falls on all of them alike; the reported figure is the median.
torch runs its default thread count. ``others %`` is how busy other processes kept the cores
meanwhile (from /proc/stat): rows with a high figure are suspect.

Each row reports the medians in ms, ours' effective bandwidth (bytes moved = every input element
read once plus every output element written once, per the SPEC) and the ratios
``ours / best peer``, ``ours / F.glu`` and ``ours / compile``: 1.0 or less means ours is at least
as fast. The table goes to stdout; raw JSON (environment and every sample) and a Markdown table
go to ``--out`` (default ``bench/results/cpu/``).

Usage::

    python bench/cpu_speed.py                      # full sweep: 32 and 64 MiB
    python bench/cpu_speed.py --quick              # 32 MiB only, fewer timed runs
    python bench/cpu_speed.py --functions glu swiglu --dtypes bfloat16 --out /tmp/cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import glu_fused
from glu_fused import reference
from glu_fused.backends.extension import built_cpu_capability

Fn = Callable[[torch.Tensor], torch.Tensor]

FUNCTIONS = ("glu", "swiglu", "geglu", "reglu", "clamped_swiglu")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
HIDDEN = 4096
FULL_SIZES_MIB = (32, 64)
QUICK_SIZES_MIB = (32,)
DIRECTIONS = ("forward", "backward")
WARMUP_RUNS = 3
FULL_TIMED_RUNS = 10
QUICK_TIMED_RUNS = 5
RTOL = ATOL = 2e-2
OURS = "ours"
PEERS = ("F.glu", "eager", "compile")
CONTENDERS = (OURS, *PEERS)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "cpu"


@dataclass(frozen=True)
class Case:
    """One input: a function applied to a [tokens, 2 * HIDDEN] tensor of `size_mib` MiB."""

    function: str
    dtype: str
    size_mib: int

    @property
    def shape(self) -> tuple[int, int]:
        itemsize = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        tokens = self.size_mib * 2**20 // (2 * HIDDEN * itemsize)
        return tokens, 2 * HIDDEN

    def bytes_moved(self, direction: str) -> int:
        """Forward reads x, writes y; backward reads x and grad_y, writes grad_x."""
        input_bytes = self.size_mib * 2**20
        half = input_bytes // 2
        return input_bytes + half if direction == "forward" else 2 * input_bytes + half


@dataclass
class Measurement:
    """The timings of every contender on one case and direction."""

    function: str
    dtype: str
    size_mib: int
    shape: tuple[int, int]
    direction: str
    timed_runs: int
    median_ms: dict[str, float] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    ours_gb_per_s: float | None = None
    ratio_vs_best_peer: float | None = None
    best_peer: str | None = None
    ratio_vs_f_glu: float | None = None
    ratio_vs_compile: float | None = None
    other_cpu_load: float | None = None

    def compute_ratios(self, bytes_moved: int) -> None:
        """Fills the bandwidth and ratio fields from the medians of the valid contenders."""
        ours = self.median_ms.get(OURS)
        if ours is None:
            return
        self.ours_gb_per_s = bytes_moved / (ours * 1e-3) / 1e9
        peers = {name: ms for name, ms in self.median_ms.items() if name != OURS}
        if peers:
            self.best_peer = min(peers, key=peers.__getitem__)
            self.ratio_vs_best_peer = ours / peers[self.best_peer]
        if "F.glu" in peers:
            self.ratio_vs_f_glu = ours / peers["F.glu"]
        if "compile" in peers:
            self.ratio_vs_compile = ours / peers["compile"]


def make_contenders(function: str) -> dict[str, Fn]:
    """The callables that compute `function` on a packed tensor, by contender name.

    The compiled one is new for each call: run it on one shape and dtype only.
    """
    ours_fn = getattr(glu_fused, function)
    reference_fn = getattr(reference, function)

    def ours(x: torch.Tensor) -> torch.Tensor:
        return ours_fn(x, layout="halves")

    def eager(x: torch.Tensor) -> torch.Tensor:
        return reference_fn(x, layout="halves")

    contenders: dict[str, Fn] = {OURS: ours}
    if function == "glu":
        contenders["F.glu"] = lambda x: F.glu(x, -1)
    contenders["eager"] = eager
    contenders["compile"] = torch.compile(eager, dynamic=False)
    return contenders


class OtherCpuLoad:
    """How busy other processes kept the machine during a `with` block, as a fraction of all
    its cores (0.0 to 1.0), from /proc/stat less this process's own CPU time. The machine may
    be shared: a busy neighbour slows multi-threaded contenders more than single-threaded ones.
    """

    def __init__(self) -> None:
        self.fraction: float | None = None

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        times = os.times()
        return times.user + times.system

    def __enter__(self) -> OtherCpuLoad:
        self._start = (time.perf_counter(), self._busy_s(), self._own_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        busy1 = self._busy_s()
        if busy0 is None or busy1 is None:
            return
        wall = time.perf_counter() - wall0
        others = (busy1 - busy0) - (self._own_s() - own0)
        self.fraction = min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def time_interleaved(
    calls: dict[str, Callable[[], object]], warmup: int, runs: int
) -> dict[str, list[float]]:
    """Wall times in ms of each call: `warmup` untimed rounds, then `runs` timed rounds.

    Each round calls every contender once, so a burst of load from elsewhere falls on all of
    them rather than on whichever was being timed at the moment.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def record_timings(
    result: Measurement,
    calls: dict[str, Callable[[], object]],
    warmup: int,
    runs: int,
    bytes_moved: int,
) -> None:
    """Times `calls` into `result` (samples, medians, other processes' load, ratios)."""
    with OtherCpuLoad() as load:
        result.samples_ms = time_interleaved(calls, warmup, runs)
    result.other_cpu_load = load.fraction
    result.median_ms = {name: statistics.median(s) for name, s in result.samples_ms.items()}
    result.compute_ratios(bytes_moved)


def mismatch(actual: torch.Tensor, expected: torch.Tensor) -> str | None:
    """None if `actual` matches ours' `expected` within the loose tolerances, else why not."""
    try:
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    except AssertionError as error:
        return " ".join(str(error).split())[:300]
    return None


def measure_forward(
    case: Case, contenders: dict[str, Fn], x: torch.Tensor, warmup: int, runs: int
) -> Measurement:
    """Checks each contender's forward output against ours, then times the valid ones."""
    result = Measurement(case.function, case.dtype, case.size_mib, case.shape, "forward", runs)
    calls: dict[str, Callable[[], object]] = {}
    with torch.no_grad():
        expected = contenders[OURS](x)
        for name, fn in contenders.items():
            why = mismatch(fn(x), expected)  # the first call also compiles `compile`
            if why is None:
                calls[name] = lambda fn=fn: fn(x)
            else:
                result.mismatched[name] = why
        del expected
        record_timings(result, calls, warmup, runs, case.bytes_moved("forward"))
    return result


def measure_backward(
    case: Case, contenders: dict[str, Fn], x: torch.Tensor, warmup: int, runs: int
) -> Measurement:
    """Per contender: one forward with grad, its output and input gradient checked against
    ours; then the backward passes alone are timed, the graphs kept with retain_graph=True."""
    result = Measurement(case.function, case.dtype, case.size_mib, case.shape, "backward", runs)
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.randn((case.shape[0], HIDDEN), dtype=x.dtype, generator=generator)

    def backward_call(out: torch.Tensor, x_grad: torch.Tensor) -> Callable[[], object]:
        return lambda: torch.autograd.grad(out, x_grad, grad_out, retain_graph=True)

    calls: dict[str, Callable[[], object]] = {}
    expected_out = expected_grad = None
    for name, fn in contenders.items():
        x_grad = x.detach().requires_grad_()
        out = fn(x_grad)
        (grad,) = torch.autograd.grad(out, x_grad, grad_out, retain_graph=True)
        if name == OURS:
            expected_out, expected_grad = out.detach(), grad
        why = mismatch(out.detach(), expected_out) or mismatch(grad, expected_grad)
        if why is None:
            calls[name] = backward_call(out, x_grad)
        else:
            result.mismatched[name] = why
    del expected_out, expected_grad, grad
    record_timings(result, calls, warmup, runs, case.bytes_moved("backward"))
    return result


def measure_case(case: Case, warmup: int, runs: int) -> list[Measurement]:
    """Forward and backward measurements of one case, with a freshly compiled peer."""
    torch._dynamo.reset()  # compile once per function, shape and dtype; no stale cache entries
    contenders = make_contenders(case.function)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, dtype=DTYPES[case.dtype], generator=generator)
    return [
        measure_forward(case, contenders, x, warmup, runs),
        measure_backward(case, contenders, x, warmup, runs),
    ]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, object]:
    """The commit of HEAD and whether the working tree has uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other processes on the cores skew timings."""
    return [round(load, 2) for load in os.getloadavg()]


def environment() -> dict[str, object]:
    """What the numbers depend on besides the code."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "glu_fused": glu_fused.__version__,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels_built_for": built_cpu_capability(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
        "git": git_state(),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (" !" if value > 1.0 else "")


HEADER = (
    "function",
    "dtype",
    "MiB",
    "dir",
    *(f"{c} ms" for c in CONTENDERS),
    "ours GB/s",
    "ours/best",
    "ours/F.glu",
    "ours/compile",
    "others %",
)


def table_rows(measurements: list[Measurement]) -> list[tuple[str, ...]]:
    """One row of strings per measurement, in HEADER's order; ' !' marks a ratio above 1."""
    rows = []
    for m in measurements:
        times = [_ms(m.median_ms.get(c)) if c not in m.mismatched else "WRONG" for c in CONTENDERS]
        gbps = "-" if m.ours_gb_per_s is None else f"{m.ours_gb_per_s:.1f}"
        rows.append(
            (
                m.function,
                m.dtype,
                str(m.size_mib),
                m.direction,
                *times,
                gbps,
                _ratio(m.ratio_vs_best_peer),
                _ratio(m.ratio_vs_f_glu),
                _ratio(m.ratio_vs_compile),
                "-" if m.other_cpu_load is None else f"{100 * m.other_cpu_load:.0f}",
            )
        )
    return rows


def format_text_table(measurements: list[Measurement]) -> str:
    """An aligned plain-text table."""
    rows = [HEADER, *table_rows(measurements)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            cell.rjust(w) if i >= 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(measurements: list[Measurement], env: dict[str, object]) -> str:
    """A Markdown report: the environment, then the table."""
    git = env["git"]
    assert isinstance(git, dict)
    lines = [
        "# glu_fused CPU speed",
        "",
        f"- date: {env['date']}",
        f"- torch {env['torch']}, Python {env['python']}, glu_fused {env['glu_fused']}",
        f"- CPU: {env['cpu_model']} ({env['cpu_capability']}; kernels built for "
        f"{env['kernels_built_for']}), {env['threads']} threads; load average at start "
        f"{env['load_average_at_start']}, at end {env['load_average_at_end']}",
        f"- git: {git['commit']}" + (" (with uncommitted changes)" if git["dirty"] else ""),
        "- median of the timed rounds after 3 warm-up rounds, contenders interleaved; "
        "ratio = ours / peer, <= 1.0 means ours is at least as fast (`!` marks > 1.0); "
        "others % = share of the cores that other processes used meanwhile",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADER))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(measurements)]
    mismatches = [(m, name, why) for m in measurements for name, why in m.mismatched.items()]
    if mismatches:
        lines += ["", "## Contenders left out (output differs from ours)", ""]
        lines += [
            f"- {m.function} {m.dtype} {m.size_mib} MiB {m.direction}, {name}: {why}"
            for m, name, why in mismatches
        ]
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: Path,
    measurements: list[Measurement],
    env: dict[str, object],
    settings: dict[str, object],
) -> None:
    """cpu_speed.json (environment, settings, every measurement) and cpu_speed.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {
        "environment": env,
        "settings": settings,
        "measurements": [asdict(m) for m in measurements],
    }
    (out_dir / "cpu_speed.json").write_text(json.dumps(raw, indent=2) + "\n")
    (out_dir / "cpu_speed.md").write_text(format_markdown(measurements, env))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZES_MIB[0]} MiB only, {QUICK_TIMED_RUNS} timed runs",
    )
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=list(FUNCTIONS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for cpu_speed.json and cpu_speed.md (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = QUICK_SIZES_MIB if args.quick else FULL_SIZES_MIB
    runs = QUICK_TIMED_RUNS if args.quick else FULL_TIMED_RUNS
    env = environment()
    settings = {
        "functions": args.functions,
        "dtypes": args.dtypes,
        "sizes_mib": list(sizes),
        "hidden": HIDDEN,
        "warmup_runs": WARMUP_RUNS,
        "timed_runs": runs,
        "rtol": RTOL,
        "atol": ATOL,
        "layout": "halves",
        "geglu_approximate": "none",
    }
    cases = [Case(f, d, s) for f in args.functions for d in args.dtypes for s in sizes]
    measurements: list[Measurement] = []
    started = time.perf_counter()
    with glu_fused.use_backend("cpu"):  # ours must run the C++ kernels, never a fallback
        for i, case in enumerate(cases, 1):
            print(
                f"[{i}/{len(cases)}] {case.function} {case.dtype} {case.size_mib} MiB "
                f"{case.shape} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            measurements += measure_case(case, WARMUP_RUNS, runs)
    env["load_average_at_end"] = load_average()
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(format_text_table(measurements))
    write_results(args.out, measurements, env, settings)
    print(f"\nwrote {args.out / 'cpu_speed.json'} and {args.out / 'cpu_speed.md'}")


if __name__ == "__main__":
    main()
