"""glu_fused's benchmark: every function, dtype, direction and shape, against every peer.

On a GPU when one is present, else on the CPU (a smaller sweep). Contenders: each of our
backends that runs the device natively, and the code users would run instead (contenders.py):
their eager PyTorch (F.glu for glu), torch.compile of it, Liger-Kernel where importable
(GPU). Every contender is checked against the float64 reference in every mode it is timed
in, and its error reported; on a GPU each is timed per eager call and as kernel time (CUDA
graphs). The copy bandwidth is measured in the same run. Writes, under
bench/results/<device>/, results.json (environment and every sample), summary.md and
bandwidth_<dtype>.png.

    python bench/run.py                  # the full sweep
    python bench/run.py --quick          # a few shapes, one dtype
    python bench/run.py --functions swiglu geglu_tanh --dtypes bfloat16 --sizes 4096x14336
    python bench/run.py --fp8            # FP8 output against its peers (bench/fp8.py)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from cases import DIRECTIONS, DTYPES, FUNCTIONS, Sweep, default_sweep, parse_shape
from contenders import make_contenders
from measure import measure_case
from report import detail_table, markdown, text_table
from timing import cache_bytes, copy_bandwidth, plan_for

import glu_fused

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "bench" / "results"


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def advance(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        filled = 30 * self.done // self.total
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
            f"{elapsed:.0f} s, ~{eta:.0f} s left  {label}"
        )
        decile = 10 * self.done // self.total
        if self.tty:
            print(
                f"\r{line[:150]:<150}",
                end="" if self.done < self.total else "\n",
                file=sys.stderr,
                flush=True,
            )
        elif decile != self._last_decile:
            self._last_decile = decile
            print(line, file=sys.stderr, flush=True)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(*args: str) -> str | None:
    try:
        done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_level() -> str:
    """The SIMD level of the CPU kernels in use (chosen at load from torch's)."""
    from glu_fused.backends import extension

    return extension.cpu_capability() or torch.backends.cpu.get_cpu_capability().lower()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()}, {_cpu_level()} kernels"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: torch.device) -> str:
    """The results folder: the CPU's model and the kernels' level, e.g.
    'cpu-amd-epyc-avx512', so that machines' results sit side by side; or the GPU's name,
    e.g. 'nvidia-h100-80gb-hbm3'."""
    if device.type == "cpu":
        return f"cpu-{_slug(_cpu_model())}-{_cpu_level()}"
    return _slug(torch.cuda.get_device_name(device))


def environment(device: torch.device) -> dict[str, object]:
    """What the figures depend on besides the code."""
    # Results written by an earlier run do not make the code dirty.
    status = _command("git", "status", "--porcelain", "--", ".", ":!bench/results")
    driver = None
    if device.type == "cuda":
        driver = _command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name(device),
        "driver": driver.splitlines()[0] if driver else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "glu_fused": glu_fused.__version__,
        "glu_fused_backends": glu_fused.backend_status(),
        "host": f"{_cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, load average {[round(v, 2) for v in os.getloadavg()]}",
        "git": {
            "commit": _command("git", "rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes, one dtype")
    parser.add_argument(
        "--fp8", action="store_true", help="FP8 output's sweep instead (bench/fp8.py)"
    )
    parser.add_argument("--functions", nargs="+", choices=list(FUNCTIONS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS)
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="TOKENSxHIDDEN",
        type=parse_shape,
        help="shapes, e.g. 1024x4096 for an input of [1024, 8192]",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        metavar="NAME",
        help="only these: ours:cuda, ours:triton, ours:cpu, eager, compile, liger",
    )
    parser.add_argument("--device", help="cuda or cpu (default: cuda when a GPU is present)")
    parser.add_argument("--out", type=Path, help="results folder (default: bench/results/<device>)")
    parser.add_argument("--seed", type=int, help="input seed (default: a fresh one, recorded)")
    return parser.parse_args(argv)


def sweep_from(args: argparse.Namespace, device: torch.device) -> Sweep:
    base = default_sweep(device, args.quick)
    return Sweep(
        tuple(args.functions or base.functions),
        tuple(args.dtypes or base.dtypes),
        tuple(args.sizes or base.shapes),
        tuple(args.directions or base.directions),
    )


def _raise_recompile_limit() -> None:
    """One compiled reference serves a function, dtype and hidden size over every token
    count; keep dynamo from falling back to eager after its default handful of graphs."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))


def run(args: argparse.Namespace, device: torch.device, out_dir: Path | None = None) -> dict:
    """The sweep; with `out_dir`, results.json is rewritten after every case, so that a run
    cut short (a time limit) leaves what it measured."""
    sweep = sweep_from(args, device)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    generator = torch.Generator(device=device).manual_seed(seed)
    plan, cache = plan_for(device), cache_bytes(device)
    wanted = set(args.contenders) if args.contenders else None
    _raise_recompile_limit()
    results: dict = {
        "environment": environment(device),
        "settings": {
            "functions": list(sweep.functions),
            "dtypes": list(sweep.dtypes),
            "shapes_tokens_x_hidden": [list(s) for s in sweep.shapes],
            "directions": list(sweep.directions),
            "seed": seed,
            "cache_bytes": cache,
            "clock": "CUDA events, per eager call and per call replayed in CUDA graphs"
            if device.type == "cuda"
            else "time.perf_counter (monotonic), per eager call",
            "timing": f"{plan.min_rounds} to {plan.max_rounds} samples of >= {plan.sample_ms} ms"
            f" after {plan.warmup_calls} warm-up calls",
        },
        "copy_bandwidth": copy_bandwidth(device, plan),
        "cases": [],
    }
    print(
        f"{results['environment']['device_name']}: copy bandwidth "
        f"{results['copy_bandwidth']['gb_per_s']:.1f} GB/s",
        file=sys.stderr,
    )
    cases = sweep.cases()
    progress, group, contenders = Progress(len(cases)), None, []
    for case in cases:
        if (case.function, case.dtype, case.hidden) != group:
            group = (case.function, case.dtype, case.hidden)
            torch._dynamo.reset()
            contenders = make_contenders(case.function, device, wanted)
        result = measure_case(case, contenders, device, sweep.directions, cache, plan, generator)
        results["cases"].append(result.to_json())
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "results.json").write_text(_json_text(results))
        progress.advance(case.label)
    return results


def _json_text(results: dict) -> str:
    """Indented JSON with each list of numbers (the samples) on one line."""
    text = json.dumps(results, indent=1)
    return (
        re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
        + "\n"
    )


def write(results: dict, out_dir: Path) -> list[Path]:
    """results.json, the plots and summary.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(_json_text(results))
    try:
        from plot import plot

        plots = plot(results, out_dir)
    except ImportError as error:
        print(f"no plots: {error} (pip install matplotlib)", file=sys.stderr)
        plots = []
    (out_dir / "summary.md").write_text(markdown(results, plots))
    return [out_dir / "results.json", out_dir / "summary.md", *(out_dir / p for p in plots)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fp8:
        import fp8

        fp8.main(
            [
                *(["--device", args.device] if args.device else []),
                *(["--out", str(args.out)] if args.out else []),
            ]
        )
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = args.out or RESULTS_ROOT / device_slug(device)
    results = run(args, device, out_dir)
    print(text_table(*detail_table(results)))
    for path in write(results, out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
