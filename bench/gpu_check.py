"""`make gpu-check`: a first GPU run in one offline command, planned to end within 8 minutes on
the H200 machine (16 cores, Python 3.12, torch 2.11, triton 3.6, no network).

Stages, each in processes of its own with a time limit of its own; one failing or running out
of time does not stop the next:

  environment  the GPU, its driver, the versions, the commit
  wheels       installs wheelhouse/*.whl (`make wheelhouse`: liger-kernel, a peer; expecttest;
               pytest-xdist and execnet, for the tests stage's workers)
               offline, into a folder put on PYTHONPATH; names what is left out without them
  build        the extension for this GPU's architecture only (GLU_FUSED_CUDA=1)
  tests        the test suites on the cuda and triton backends (pytest -k "cuda or triton or
               gpu", in parallel where pytest-xdist is installed)
  sanitizer    compute-sanitizer's memcheck and racecheck on bench/sanitize_driver.py, which
               calls every kernel variant once
  bench        a sweep sized to fit: every function, bfloat16, a large (>= 64 MiB) input,
               every direction, every peer, eager and kernel times
  fp8          FP8 output (bench/fp8.py): every granularity against its peers, the bytes
               each mode moves and its % of copy
  overhead     host time per call on the GPU (bench/overhead.py)

Writes bench/results/<gpu>/ (the benchmark's results.json, summary.md and plots, overhead.md,
gpu-check.md with every stage's outcome and time, logs/), and where $OUT is set, gpu-check.md
and one archive of all of it there (the device tool brings back at most 8 files).

    make gpu-check                        # on a machine with a CUDA GPU
    python bench/gpu_check.py --tiny      # the same stages' plumbing on the CPU, small (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WHEELHOUSE = REPO / "wheelhouse"
# What the wheelhouse brings, and what each one is for.
WHEELS = {"liger_kernel": "liger-kernel (a benchmark peer)", "expecttest": "expecttest"}


@dataclass
class Stage:
    """Commands run in order (the stage fails at the first that fails), with one time limit
    for all of them; `summary` turns the stage's log into one line."""

    name: str
    commands: list[list[str]]
    limit_s: float
    summary: Callable[[str], str] = lambda log: ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    status: str  # passed, failed, timed out, skipped
    seconds: float
    summary: str
    log: str


@dataclass
class Plan:
    """What the stages run on this machine: the device, the results folder, the limits."""

    tiny: bool
    device: str
    results: Path
    env: dict[str, str]
    stages: list[Stage] = field(default_factory=list)


def gpu_slug() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def gpu_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def find_tool(name: str) -> str | None:
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (shutil.which(name), f"{cuda}/bin/{name}", f"{cuda}/{name}/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---- one-line summaries of the stages' logs --------------------------------------------------


def last_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def junit_summary(path: Path) -> Callable[[str], str]:
    def summarize(log: str) -> str:
        try:
            suites = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError):
            return last_line(log)
        totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        failed = []
        for suite in suites.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
        passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
        text = (
            f"{passed} passed, {totals['failures']} failed, {totals['errors']} errors, "
            f"{totals['skipped']} skipped"
        )
        return text + (f"; failing: {', '.join(failed[:10])}" if failed else "")

    return summarize


def bench_summary(results: Path) -> Callable[[str], str]:
    """Cases measured, and ours at its worst: speedups over the fastest peer (per eager call
    and in kernel time) and % of the copy bandwidth at 64 MiB and more. Remakes summary.md
    from results.json where the run was cut short."""

    def summarize(log: str) -> str:
        import report

        try:
            found = json.loads((results / "results.json").read_text())
        except (OSError, ValueError):
            return last_line(log)
        if not (results / "summary.md").exists():
            (results / "summary.md").write_text(report.markdown(found, []))
        ours = [r for r in report.rows(found) if r.is_ours]
        parts = [
            f"{len(found['cases'])} cases, copy {found['copy_bandwidth']['gb_per_s']:.0f} GB/s"
        ]
        for label, attr in (
            ("speedup", "speedup_vs_best_peer"),
            ("kernel speedup", "kernel_speedup_vs_best_peer"),
        ):
            values = [getattr(r, attr) for r in ours if getattr(r, attr) is not None]
            if values:
                parts.append(f"lowest {label} {min(values):.2f}")
        large = [r.pct_of_copy for r in ours if r.input_bytes >= report.LARGE_INPUT_BYTES]
        if large:
            parts.append(f"lowest % copy >= 64 MiB {min(large):.0f}")
        return "; ".join(parts)

    return summarize


def overhead_summary(log: str) -> str:
    met, missed = log.count(": met |"), log.count("NOT met")
    return f"{met} of {met + missed} host-time bars met" if met + missed else last_line(log)


def sanitizer_summary(log: str) -> str:
    found = re.findall(r"ERROR SUMMARY: .*", log)
    return "; ".join(found) or last_line(log)


# ---- the stages ------------------------------------------------------------------------------


def wheel_stage(plan: Plan) -> Stage:
    """Installs the wheelhouse into a folder of its own, which later stages put on their
    PYTHONPATH (the machine's own site-packages is left as it is)."""
    site = plan.results / "site-packages"
    wheels = sorted(str(p) for p in WHEELHOUSE.glob("*.whl")) if WHEELHOUSE.is_dir() else []
    present = {p.name.split("-")[0].lower() for p in map(Path, wheels)}
    missing = [what for name, what in WHEELS.items() if name not in present]
    note = f"left out without wheels: {', '.join(missing)} (make wheelhouse)" if missing else ""
    commands = []
    if wheels:
        commands.append(
            [PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--upgrade", "--target", str(site), *wheels]
        )  # fmt: skip
    commands.append([PYTHON, "-c", f"print({json.dumps(note or 'every wheel installed')})"])
    if wheels:
        plan.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(site), plan.env.get("PYTHONPATH")])
        )
    return Stage("wheels", commands, 30, last_line)


def build_stage(plan: Plan) -> Stage:
    """In place, as the tests and the benchmark import it from the repository; on a GPU for
    its architecture only (a build for all of them takes minutes).

    Tiny mode builds only where the checkout holds no extension for this Python: where `make
    test` has built one, the same command for sm_90 would take two minutes to rebuild what
    CI has just built and `make test-oldest` builds again, with the GPU machine's Python and
    torch, by this very command."""
    env = {"GLU_FUSED_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4)}
    env["TORCH_CUDA_ARCH_LIST"] = "9.0" if plan.tiny else gpu_arch()
    command = [PYTHON, "setup.py", "build_ext", "--inplace"]
    built = REPO / "glu_fused" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    if plan.tiny and built.exists():
        why = (
            f"not rebuilt (tiny): {built.relative_to(REPO)} is there; GPU runs: {' '.join(command)}"
        )
        command = [PYTHON, "-c", f"print({why!r})"]
    return Stage("build", [command], 600 if plan.tiny else 100, last_line, env)


def test_stage(plan: Plan) -> Stage:
    xml = plan.results / "logs" / "tests.xml"
    command = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if plan.tiny:
        command += ["tests/test_table.py", "tests/test_gpu.py"]
    else:
        # The codegen tests need no GPU (CI runs them); -n: Triton compiles its kernels in
        # every worker at once.
        command += ["tests", "-k", "(cuda or triton or gpu) and not codegen"]
        if _has_module("xdist") or _in_wheelhouse("pytest_xdist"):
            command += [
                "-n",
                str(min(16, os.cpu_count() or 1)),
                "--dist",
                "loadscope",
                "--no-loadscope-reorder",
            ]
        if _has_module("pytest_timeout"):
            command += ["--timeout", "120"]
    return Stage("tests", [command], 60 if plan.tiny else 120, junit_summary(xml))


def sanitizer_stage(plan: Plan) -> Stage:
    driver = [PYTHON, "bench/sanitize_driver.py"]
    sanitizer = find_tool("compute-sanitizer")
    if plan.tiny or sanitizer is None:
        # Without a GPU (or the tool) the driver runs alone: the same calls, on the CPU.
        device = "cuda" if not plan.tiny else "cpu"
        why = "no GPU" if plan.tiny else "compute-sanitizer not found"
        commands = [
            [PYTHON, "-c", f"print('sanitizer: not run ({why}); the driver alone')"],
            [*driver, "--device", device, "--backend", device],
        ]
        return Stage("sanitizer", commands, 60, last_line)
    commands = [
        [sanitizer, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20", *driver]
        for tool in ("memcheck", "racecheck")
    ]
    return Stage("sanitizer", commands, 60, sanitizer_summary)


def bench_stage(plan: Plan) -> Stage:
    command = [PYTHON, "bench/run.py", "--device", plan.device, "--out", str(plan.results)]
    if plan.tiny:
        command += ["--functions", "swiglu", "--dtypes", "float32", "--sizes", "2x64"]
        command += ["--contenders", "ours:cpu", "eager"]
    else:
        # One size per function: each adds a torch.compile of the peer. bfloat16 alone, so
        # that the fp8 stage's minute fits the call.
        command += ["--dtypes", "bfloat16", "--sizes", "8192x4096"]
    return Stage("bench", [command], 60, bench_summary(plan.results))


def fp8_stage(plan: Plan) -> Stage:
    """FP8 output against its peers (bench/fp8.py): the bytes each mode moves, its % of copy.
    Its minute comes from the bench stage's, which times bfloat16 alone to give it."""
    command = [PYTHON, "bench/fp8.py", "--device", plan.device, "--out", str(plan.results)]
    if plan.tiny:
        command += ["--functions", "swiglu", "--sizes", "2x128"]
    else:
        command += ["--sizes", "16384x4096"]
    return Stage("fp8", [command], 60, last_line)


def overhead_stage(plan: Plan) -> Stage:
    command = [PYTHON, "bench/overhead.py", "--device", plan.device]
    command += ["--out", str(plan.results / "overhead.md")]
    if plan.tiny:
        command += ["--batch", "20", "--rounds", "3"]
    return Stage("overhead", [command], 30, overhead_summary)


def environment_stage(plan: Plan) -> Stage:
    commands = [[PYTHON, "bench/gpu_check.py", "--environment"]]
    smi = find_tool("nvidia-smi")
    if smi is not None:
        commands.insert(0, [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv"])
    return Stage("environment", commands, 20, last_line)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _in_wheelhouse(distribution: str) -> bool:
    """Whether the wheels stage installs `distribution` (its wheel's name) for later stages."""
    return WHEELHOUSE.is_dir() and any(WHEELHOUSE.glob(f"{distribution}-*.whl"))


def make_plan(tiny: bool, out: Path | None) -> Plan:
    slug = None if tiny else gpu_slug()
    if not tiny and slug is None:
        raise SystemExit("gpu-check: no CUDA GPU (bench/gpu_check.py --tiny runs the plumbing)")
    if out is None:
        out = REPO / "bench" / "results" / slug if slug else Path(tempfile.mkdtemp(prefix="gpu-"))
    results = out
    # The build is in place, not installed: every stage imports glu_fused from the checkout.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    plan = Plan(tiny, "cpu" if tiny else "cuda", results.resolve(), env)
    plan.stages = [
        environment_stage(plan),
        wheel_stage(plan),
        build_stage(plan),
        test_stage(plan),
        sanitizer_stage(plan),
        bench_stage(plan),
        fp8_stage(plan),
        overhead_stage(plan),
    ]
    return plan


# ---- running them ----------------------------------------------------------------------------


def run_stage(stage: Stage, plan: Plan) -> Outcome:
    log_path = plan.results / "logs" / f"{stage.name}.log"
    env = {**os.environ, **plan.env, **stage.env}
    start = time.monotonic()
    status = "passed"
    with log_path.open("w") as log:
        for command in stage.commands:
            left = stage.limit_s - (time.monotonic() - start)
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                    timeout=max(left, 1),
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                status = "timed out"
                break
            except OSError as error:
                log.write(f"could not run: {error}\n")
                status = "failed"
                break
            if done.returncode != 0:
                log.write(f"exit status {done.returncode}\n")
                status = "failed"
                break
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    return Outcome(stage.name, status, seconds, stage.summary(text), str(log_path))


def report(plan: Plan, outcomes: list[Outcome]) -> str:
    total = sum(o.seconds for o in outcomes)
    lines = [
        f"# gpu-check{' (tiny, on the CPU)' if plan.tiny else ''}",
        "",
        f"{sum(o.status == 'passed' for o in outcomes)} of {len(outcomes)} stages passed in "
        f"{total:.0f} s. Logs: logs/<stage>.log.",
        "",
        "| stage | status | seconds | limit | summary |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for stage, o in zip(plan.stages, outcomes):
        cells = (o.name, o.status, f"{o.seconds:.0f}", f"{stage.limit_s:.0f}", o.summary)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def copy_out(plan: Plan, report_text: str) -> None:
    """Under $OUT: gpu-check.md, and everything in one archive (few files come back)."""
    out = os.environ.get("OUT")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "gpu-check.md").write_text(report_text)
    with tarfile.open(Path(out, "gpu-check.tar.gz"), "w:gz") as archive:
        archive.add(plan.results, arcname=plan.results.name, filter=_without_site_packages)


def _without_site_packages(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "/site-packages" in info.name else info


def print_environment() -> None:
    """The environment stage's second half: versions, the commit, the GPU as torch sees it."""
    import importlib.metadata
    import platform

    import torch

    versions = {}
    for package in ("torch", "triton", "liger-kernel", "pytest", "pytest-xdist", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    facts = {"python": platform.python_version(), "gpu": gpu, "cores": os.cpu_count()}
    facts.update(torch_cuda=torch.version.cuda, commit=commit or None, **versions)
    print(json.dumps(facts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the plumbing on the CPU, small")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<gpu>)")
    parser.add_argument("--only", nargs="+", help="run only these stages")
    parser.add_argument("--environment", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.environment:
        print_environment()
        return 0
    plan = make_plan(args.tiny, args.out)
    (plan.results / "logs").mkdir(parents=True, exist_ok=True)
    outcomes = []
    for stage in plan.stages:
        if args.only and stage.name not in args.only:
            outcomes.append(Outcome(stage.name, "skipped", 0.0, "not asked for", ""))
            continue
        print(f"gpu-check: {stage.name} (at most {stage.limit_s:.0f} s)", flush=True)
        outcome = run_stage(stage, plan)
        print(f"gpu-check: {stage.name} {outcome.status} in {outcome.seconds:.0f} s: "
              f"{outcome.summary}", flush=True)  # fmt: skip
        outcomes.append(outcome)
    text = report(plan, outcomes)
    (plan.results / "gpu-check.md").write_text(text)
    (plan.results / "gpu-check.json").write_text(
        json.dumps([asdict(o) for o in outcomes], indent=1) + "\n"
    )
    copy_out(plan, text)
    print(text)
    return 0 if all(o.status in ("passed", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
