"""The results as rows (time, effective bandwidth, % of the copy bandwidth, speedup over the
fastest peer, error against float64), a terminal table and a Markdown summary. Everything here
reads the JSON-shaped dicts that run.py writes, so a report can be remade from a results file.

Two clocks where the device has them: `eager` (time per eager call, the host's work included)
and `kernel` (CUDA graph replays: the GPU's work alone). Speedups compare like with like."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

OURS_PREFIX = "ours:"  # the contender names of our backends: ours:cuda, ours:triton, ours:cpu
LARGE_INPUT_BYTES = 64 << 20  # docs/contract.md holds kernels to 90% of copy bandwidth from here
# The checks each direction's timing relies on (measure.NEEDS).
CHECKS_OF = {
    "forward": ("forward",),
    "backward": ("gradient",),
    "forward+backward": ("forward", "gradient"),
}


@dataclass(frozen=True)
class Row:
    """One contender on one case and direction."""

    function: str
    dtype: str
    tokens: int
    hidden: int
    input_bytes: int
    direction: str
    contender: str
    ms: float  # per eager call
    kernel_ms: float | None  # per call, replayed in a CUDA graph; None without one
    gb_per_s: float  # from the kernel time where there is one
    pct_of_copy: float
    best_peer: str | None
    speedup_vs_best_peer: float | None  # best peer's ms / this one's: > 1 is faster
    best_kernel_peer: str | None
    kernel_speedup_vs_best_peer: float | None
    error: float | None  # worst |err| / glu_fused's bound over what the direction returns
    # The run-to-run spread of the eager times behind speedup_vs_best_peer: the larger, over
    # this contender and that peer, of |median of its odd samples / median of its even - 1|,
    # as if each had been timed twice. None with fewer than 4 samples.
    spread: float | None = None

    @property
    def is_ours(self) -> bool:
        return self.contender.startswith(OURS_PREFIX)


def _best_peer(times: dict[str, float]) -> str | None:
    peers = {n: ms for n, ms in times.items() if not n.startswith(OURS_PREFIX)}
    return min(peers, key=peers.__getitem__) if peers else None


def _speedup(name: str, times: dict[str, float], best: str | None) -> float | None:
    if best is None or not name.startswith(OURS_PREFIX) or name not in times:
        return None
    return times[best] / times[name]


def half_spread(samples: list[float]) -> float | None:
    """|median(odd samples) / median(even samples) - 1|: how far one contender's time moves
    between two timings of it, the samples being interleaved with the other contenders'."""
    if len(samples) < 4:
        return None
    return abs(statistics.median(samples[1::2]) / statistics.median(samples[0::2]) - 1)


def _pair_spread(samples: dict[str, list[float]], name: str, best: str | None) -> float | None:
    found = [half_spread(samples.get(n, [])) for n in (name, best) if n is not None]
    found = [f for f in found if f is not None]
    return max(found) if found else None


def error_of(case: dict, name: str, direction: str) -> float | None:
    """The contender's worst error on what `direction` returns, in units of glu_fused's
    bound (<= 1: as accurate as glu_fused promises)."""
    found = case.get("errors", {}).get(name)
    if not found:
        return None
    return max(found[check]["bound_ratio"] for check in CHECKS_OF[direction])


def rows(results: dict) -> list[Row]:
    """Every timed contender of every case and direction."""
    copy_gbps = results["copy_bandwidth"]["gb_per_s"]
    out = []
    for case in results["cases"]:
        for d in case["directions"]:
            eager, kernel = d["median_ms"], d.get("kernel_ms", {})
            best, best_kernel = _best_peer(eager), _best_peer(kernel)
            for name, ms in eager.items():
                kernel_ms = kernel.get(name)
                gbps = d["bytes_moved"] / (kernel_ms or ms) / 1e6
                out.append(
                    Row(
                        case["function"],
                        case["dtype"],
                        case["tokens"],
                        case["hidden"],
                        case["input_bytes"],
                        d["direction"],
                        name,
                        ms,
                        kernel_ms,
                        gbps,
                        100 * gbps / copy_gbps,
                        best,
                        _speedup(name, eager, best),
                        best_kernel,
                        _speedup(name, kernel, best_kernel),
                        error_of(case, name, d["direction"]),
                        _pair_spread(d.get("samples_ms", {}), name, best),
                    )
                )
    return out


def contender_order(results: dict) -> list[str]:
    """Ours first, then the peers, in the order they first appear."""
    names: dict[str, None] = {}
    for case in results["cases"]:
        names.update(dict.fromkeys(case["status"]))
    return sorted(names, key=lambda n: not n.startswith(OURS_PREFIX))


def has_kernel_times(results: dict) -> bool:
    return any(d.get("kernel_ms") for c in results["cases"] for d in c["directions"])


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g}"


def _ratio(value: float | None, spread: float | None = None) -> str:
    """'!' marks a speedup below 1; '~' one below 1 by no more than the run-to-run spread
    (level)."""
    if value is None:
        return "-"
    if value >= 1.0:
        return f"{value:.2f}"
    return f"{value:.2f}" + (" ~" if spread is not None and 1.0 - value <= spread else " !")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def detail_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per case and direction; per contender its ms per eager call
    (and kernel ms on a GPU) and its error (in units of glu_fused's bound); then for each of
    ours its GB/s, % of copy and speedup over the fastest peer ('!' when slower)."""
    names = contender_order(results)
    kernel = has_kernel_times(results)
    ours = [n for n in names if n.startswith(OURS_PREFIX)]
    header = ["function", "dtype", "shape", "MiB", "direction"]
    for n in names:
        header += [f"{n} ms", *([f"{n} kernel ms"] if kernel else []), f"{n} err"]
    for n in ours:
        header += [f"{n} GB/s", f"{n} % copy", f"{n} speedup"]
        header += [f"{n} kernel speedup"] if kernel else []
    by_key: dict[tuple, dict[str, Row]] = {}
    for r in rows(results):
        by_key.setdefault((r.function, r.dtype, r.tokens, r.hidden, r.direction), {})[
            r.contender
        ] = r
    table = []
    for case in results["cases"]:
        for d in case["directions"]:
            key = (case["function"], case["dtype"], case["tokens"], case["hidden"])
            timed = by_key.get((*key, d["direction"]), {})
            line = [
                case["function"],
                case["dtype"],
                f"{case['tokens']}x{2 * case['hidden']}",
                _mib(case["input_bytes"]),
                d["direction"],
            ]
            for n in names:
                r = timed.get(n)
                if r is None:
                    line += [_why_missing(case, d, n)] * (2 if kernel else 1)
                else:
                    line.append(f"{r.ms:.4g}")
                    if kernel:
                        line.append(f"{r.kernel_ms:.4g}" if r.kernel_ms else "-")
                line.append(_error(error_of(case, n, d["direction"])))
            for n in ours:
                r = timed.get(n)
                cells = (
                    [
                        f"{r.gb_per_s:.1f}",
                        f"{r.pct_of_copy:.0f}",
                        _ratio(r.speedup_vs_best_peer, r.spread),
                    ]
                    if r
                    else ["-", "-", "-"]
                )
                if kernel:
                    cells.append(_ratio(r.kernel_speedup_vs_best_peer) if r else "-")
                line += cells
            table.append(line)
    return header, table


def _why_missing(case: dict, direction: dict, name: str) -> str:
    status = case["status"].get(name, {}).get(direction["direction"])
    if status is None:
        return "n/a"
    if status != "ok":
        return "WRONG" if status.startswith("wrong") else "FAILED"
    return "FAILED" if name in direction["failed"] or "timing" in direction["failed"] else "-"


TEXT_COLUMNS = {"function", "dtype", "shape", "direction", "backend", "contender"}


def _is_text(column: str) -> bool:
    return column in TEXT_COLUMNS


def text_table(header: list[str], table: list[list[str]]) -> str:
    """Aligned columns: text to the left, figures to the right."""
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if _is_text(column) else cell.rjust(width)
            for column, cell, width in zip(header, row, widths)
        )
        for row in [header, *table]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(header: list[str], table: list[list[str]]) -> list[str]:
    align = ["---" if _is_text(column) else "---:" for column in header]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in table),
    ]


def _lowest(group: list[Row], speedup: str, peer: str) -> str:
    with_peer = [r for r in group if getattr(r, speedup) is not None]
    if not with_peer:
        return "-"
    worst = min(with_peer, key=lambda r: getattr(r, speedup))
    spread = worst.spread if speedup == "speedup_vs_best_peer" else None
    return (
        f"{_ratio(getattr(worst, speedup), spread)} ({_mib(worst.input_bytes)}, "
        f"{getattr(worst, peer)})"
    )


def summary(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per function, dtype, direction and our backend: % of the copy bandwidth at the largest
    input (and the lowest over inputs of 64 MiB and more), and the speedup over the fastest
    peer, at the largest and lowest over all sizes: per eager call, and in kernel time where
    there is one."""
    kernel = has_kernel_times(results)
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in rows(results):
        if r.is_ours:
            groups.setdefault((r.function, r.dtype, r.direction, r.contender), []).append(r)
    header = [
        "function",
        "dtype",
        "direction",
        "backend",
        "largest MiB",
        "% copy at largest",
        "lowest % copy >= 64 MiB",
        "speedup at largest",
        "lowest speedup (at MiB, vs)",
        "worst spread %",
    ]
    if kernel:
        header += ["kernel speedup at largest", "lowest kernel speedup (at MiB, vs)"]
    table = []
    for (function, dtype, direction, name), group in groups.items():
        largest = max(group, key=lambda r: r.input_bytes)
        large = [r for r in group if r.input_bytes >= LARGE_INPUT_BYTES]
        line = [
            function,
            dtype,
            direction,
            name.removeprefix(OURS_PREFIX),
            _mib(largest.input_bytes),
            f"{largest.pct_of_copy:.0f}",
            f"{min(r.pct_of_copy for r in large):.0f}" if large else "-",
            _ratio(largest.speedup_vs_best_peer, largest.spread),
            _lowest(group, "speedup_vs_best_peer", "best_peer"),
            _percent(max((r.spread for r in group if r.spread is not None), default=None)),
        ]
        if kernel:
            line += [
                _ratio(largest.kernel_speedup_vs_best_peer),
                _lowest(group, "kernel_speedup_vs_best_peer", "best_kernel_peer"),
            ]
        table.append(line)
    return header, table


def accuracy_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per function and dtype, each contender's worst error over the sweep, outputs and input
    gradient, in units of glu_fused's bound (<= 1: within what glu_fused promises)."""
    names = contender_order(results)
    worst: dict[tuple[str, str], dict[str, list[float]]] = {}
    for case in results["cases"]:
        group = worst.setdefault((case["function"], case["dtype"]), {})
        for name, found in case.get("errors", {}).items():
            if not found:
                continue
            pair = group.setdefault(name, [0.0, 0.0])
            pair[0] = max(pair[0], found["forward"]["bound_ratio"])
            pair[1] = max(pair[1], found["gradient"]["bound_ratio"])
    header = ["function", "dtype", *(f"{n} out / grad" for n in names)]
    table = [
        [
            function,
            dtype,
            *(f"{_error(g[n][0])} / {_error(g[n][1])}" if n in g else "-" for n in names),
        ]
        for (function, dtype), g in worst.items()
    ]
    return header, table


def memory_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Peak MiB of one forward plus backward per contender, at each case's largest input."""
    names = contender_order(results)
    largest: dict[tuple[str, str], dict] = {}
    for case in results["cases"]:
        key = (case["function"], case["dtype"])
        if key not in largest or case["input_bytes"] > largest[key]["input_bytes"]:
            largest[key] = case
    header = ["function", "dtype", "shape", "MiB", *(f"{n} peak MiB" for n in names)]
    table = []
    for (function, dtype), case in largest.items():
        peaks = case["peak_memory_bytes"]
        table.append(
            [
                function,
                dtype,
                f"{case['tokens']}x{2 * case['hidden']}",
                _mib(case["input_bytes"]),
                *(_mib(peaks[n]) if peaks.get(n) is not None else "-" for n in names),
            ]
        )
    return header, table


def left_out(results: dict) -> list[str]:
    """Contenders not timed on some case and direction, and why."""
    lines = []
    for case in results["cases"]:
        label = f"{case['function']} {case['dtype']} {case['tokens']}x{2 * case['hidden']}"
        for name, statuses in case["status"].items():
            reasons: dict[str, list[str]] = {}
            for direction, status in statuses.items():
                if status != "ok":
                    reasons.setdefault(status, []).append(direction)
            for status, directions in reasons.items():
                lines.append(f"- {label} {', '.join(directions)}, {name}: {status}")
        for d in case["directions"]:
            for name, why in d["failed"].items():
                lines.append(f"- {label} {d['direction']}, {name}: {why}")
    return lines


def markdown(results: dict, plots: list[str]) -> str:
    env, copy = results["environment"], results["copy_bandwidth"]
    settings = results["settings"]
    lines = [
        f"# glu_fused benchmark: {env['device_name']}",
        "",
        f"- date {env['date']}; git {env['git']['commit']}"
        + (" (with uncommitted changes)" if env["git"]["dirty"] else ""),
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}), triton {env['triton']}, "
        f"liger-kernel {env['liger_kernel']}, Python {env['python']}, driver {env['driver']}",
        f"- {env['host']}",
        f"- copy bandwidth ({_mib(copy['bytes'] / 2)} MiB `copy_`, read + write): "
        f"**{copy['gb_per_s']:.1f} GB/s**",
        f"- timing: {settings['clock']}; median of {settings['timing']}; "
        "inputs rotated where one set fits in the cache twice over",
        "- peers: the code users write, in the input's dtype (eager: `F.glu`, "
        "`F.silu(gate) * up`, `F.gelu(gate) * up`, ..., gpt-oss's clamped SwiGLU as "
        "transformers writes it), `torch.compile` of it, Liger-Kernel where installed",
        "- bytes moved: every input element read once, every output element written once "
        "(forward 1.5x the input, backward 2.5x, forward+backward 4x)",
        "- speedup = fastest peer's time / ours (`!` marks < 1, slower; `~` < 1 by no more "
        "than the run-to-run spread: level); % copy from the kernel time where there is one",
        "- spread: how far a time moves when timed twice, from each contender's own samples "
        "(median of the odd ones against median of the even ones), the larger of ours and "
        "the fastest peer's; worst spread % is the largest over the sizes",
        "- err = worst |error| against the float64 reference / glu_fused's bound for the dtype "
        "(<= 1: within what glu_fused promises); checked, before timing, on inputs of spread 4 "
        "(past the clamps of clamped_swiglu) in every mode timed. Ours must be within its "
        "bound; a peer is left out of a direction only where its results are wrong beyond "
        "torch.testing's default tolerance",
        "",
        "## Summary",
        "",
        *markdown_table(*summary(results)),
        "",
        *(f"![{p}]({p})" for p in plots),
        "",
        "## Accuracy: worst error over the sweep",
        "",
        *markdown_table(*accuracy_table(results)),
        "",
        "## Peak memory of forward + backward",
        "",
        *markdown_table(*memory_table(results)),
        "",
        "## Every measurement (ms per call)",
        "",
        *markdown_table(*detail_table(results)),
    ]
    missing = left_out(results)
    if missing:
        lines += ["", "## Left out", "", *missing]
    return "\n".join(lines) + "\n"
