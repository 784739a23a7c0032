"""The results as rows (time, effective bandwidth, % of the copy bandwidth, speedup over the
fastest peer), a terminal table and a Markdown summary. Everything here reads the JSON-shaped
dicts that run.py writes, so a report can be remade from a results file."""

from __future__ import annotations

from dataclasses import dataclass

OURS_PREFIX = "ours:"  # the contender names of our backends: ours:cuda, ours:triton, ours:cpu
LARGE_INPUT_BYTES = 64 << 20  # docs/contract.md holds kernels to 90% of copy bandwidth from here


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
    ms: float
    gb_per_s: float
    pct_of_copy: float
    best_peer: str | None
    speedup_vs_best_peer: float | None  # best peer's ms / this one's: > 1 is faster

    @property
    def is_ours(self) -> bool:
        return self.contender.startswith(OURS_PREFIX)


def rows(results: dict) -> list[Row]:
    """Every timed contender of every case and direction."""
    copy_gbps = results["copy_bandwidth"]["gb_per_s"]
    out = []
    for case in results["cases"]:
        for d in case["directions"]:
            peers = {n: ms for n, ms in d["median_ms"].items() if not n.startswith(OURS_PREFIX)}
            best_peer = min(peers, key=peers.__getitem__) if peers else None
            for name, ms in d["median_ms"].items():
                gbps = d["bytes_moved"] / ms / 1e6
                speedup = None
                if best_peer is not None and name.startswith(OURS_PREFIX):
                    speedup = peers[best_peer] / ms
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
                        gbps,
                        100 * gbps / copy_gbps,
                        best_peer,
                        speedup,
                    )
                )
    return out


def contender_order(results: dict) -> list[str]:
    """Ours first, then the peers, in the order they first appear."""
    names: dict[str, None] = {}
    for case in results["cases"]:
        names.update(dict.fromkeys(case["status"]))
    return sorted(names, key=lambda n: not n.startswith(OURS_PREFIX))


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g}"


def _speedup(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (" !" if value < 1.0 else "")


def detail_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per case and direction, the contenders' ms side by side, then
    for each of ours its GB/s, % of copy and speedup over the fastest peer ('!' when slower)."""
    names = contender_order(results)
    ours = [n for n in names if n.startswith(OURS_PREFIX)]
    header = ["function", "dtype", "shape", "MiB", "direction", *(f"{n} ms" for n in names)]
    for n in ours:
        header += [f"{n} GB/s", f"{n} % copy", f"{n} speedup"]
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
                line.append(f"{timed[n].ms:.4g}" if n in timed else _why_missing(case, d, n))
            for n in ours:
                r = timed.get(n)
                line += (
                    [f"{r.gb_per_s:.1f}", f"{r.pct_of_copy:.0f}", _speedup(r.speedup_vs_best_peer)]
                    if r
                    else ["-", "-", "-"]
                )
            table.append(line)
    return header, table


def _why_missing(case: dict, direction: dict, name: str) -> str:
    status = case["status"].get(name)
    if status is None:
        return "n/a"
    if status != "ok":
        return "WRONG" if status.startswith("wrong") else "FAILED"
    return "FAILED" if name in direction["failed"] or "timing" in direction["failed"] else "-"


TEXT_COLUMNS = {"function", "dtype", "shape", "direction", "backend"}


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


def summary(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per function, dtype, direction and our backend: % of the copy bandwidth at the largest
    input (and the lowest over inputs of 64 MiB and more), and the speedup over the fastest
    peer, lowest over all sizes and at the largest."""
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
    ]
    table = []
    for (function, dtype, direction, name), group in groups.items():
        largest = max(group, key=lambda r: r.input_bytes)
        large = [r for r in group if r.input_bytes >= LARGE_INPUT_BYTES]
        with_peer = [r for r in group if r.speedup_vs_best_peer is not None]
        worst = min(with_peer, key=lambda r: r.speedup_vs_best_peer) if with_peer else None
        table.append(
            [
                function,
                dtype,
                direction,
                name.removeprefix(OURS_PREFIX),
                _mib(largest.input_bytes),
                f"{largest.pct_of_copy:.0f}",
                f"{min(r.pct_of_copy for r in large):.0f}" if large else "-",
                _speedup(largest.speedup_vs_best_peer),
                f"{_speedup(worst.speedup_vs_best_peer)} ({_mib(worst.input_bytes)}, "
                f"{worst.best_peer})"
                if worst
                else "-",
            ]
        )
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
    """Contenders not timed on some case, and why."""
    lines = []
    for case in results["cases"]:
        label = f"{case['function']} {case['dtype']} {case['tokens']}x{2 * case['hidden']}"
        for name, status in case["status"].items():
            if status != "ok":
                lines.append(f"- {label}, {name}: {status}")
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
        "- bytes moved: every input element read once, every output element written once "
        "(forward 1.5x the input, backward 2.5x, forward+backward 4x)",
        "- speedup = fastest peer's time / ours (`!` marks < 1, slower); every contender's "
        "output and gradient checked against the float64 reference before timing",
        "",
        "## Summary",
        "",
        *markdown_table(*summary(results)),
        "",
        *(f"![{p}]({p})" for p in plots),
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
