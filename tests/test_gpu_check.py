"""make gpu-check's plumbing, without a GPU: the stages run in tiny mode on the CPU, and the
commands a GPU machine would run are built as there and parsed by the programs they call, so
that the first GPU run cannot die of a typo. (`make gpu-check-dry-run` runs the same with the
build stage too, which test_tiny_plan_rebuilds_only_a_checkout_without_an_extension covers.)"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import overhead  # noqa: E402
import run  # noqa: E402
import sanitize_driver  # noqa: E402


def test_tiny_run_passes_every_stage_and_writes_its_report(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    stages = ["environment", "wheels", "tests", "sanitizer", "bench", "fp8", "overhead"]
    code = gpu_check.main(["--tiny", "--out", str(tmp_path / "results"), "--only", *stages])
    report = (tmp_path / "results" / "gpu-check.md").read_text()
    assert code == 0, report
    for stage in stages:
        assert f"| {stage} | passed |" in report
    assert "| build | skipped |" in report
    for name in ("results.json", "summary.md", "overhead.md", "logs/tests.xml"):
        assert (tmp_path / "results" / name).exists(), name
    assert (out / "gpu-check.md").read_text() == report
    assert (out / "gpu-check.tar.gz").stat().st_size > 0


def test_a_failing_stage_does_not_stop_the_others(tmp_path):
    plan = gpu_check.Plan(True, "cpu", tmp_path, {})
    fail = gpu_check.Stage("first", [[sys.executable, "-c", "raise SystemExit(3)"]], 30)
    slow = gpu_check.Stage("second", [[sys.executable, "-c", "import time; time.sleep(5)"]], 1)
    fine = gpu_check.Stage("third", [[sys.executable, "-c", "print('done')"]], 30)
    (tmp_path / "logs").mkdir()
    outcomes = [gpu_check.run_stage(stage, plan) for stage in (fail, slow, fine)]
    assert [o.status for o in outcomes] == ["failed", "timed out", "passed"]
    assert "exit status 3" in Path(outcomes[0].log).read_text()


@pytest.fixture
def gpu_plan(monkeypatch, tmp_path):
    """The plan as an H200 machine would make it: the probes of the GPU and the tools faked."""
    monkeypatch.setattr(gpu_check, "gpu_slug", lambda: "nvidia-h200")
    monkeypatch.setattr(gpu_check, "gpu_arch", lambda: "9.0")
    monkeypatch.setattr(gpu_check, "find_tool", lambda name: f"/usr/local/cuda/bin/{name}")
    monkeypatch.setattr(gpu_check, "_has_module", lambda name: True)
    return {s.name: s for s in gpu_check.make_plan(False, tmp_path).stages}


def test_gpu_plan_fits_the_device_call(gpu_plan):
    """Every stage at its time limit still ends within 8 minutes: the device tool's call
    (README: timeout_s=540) then never cuts the run short."""
    assert sum(stage.limit_s for stage in gpu_plan.values()) <= 8 * 60


def test_every_stage_imports_the_checkout(tmp_path):
    """The build is in place, not installed: the stages find glu_fused on PYTHONPATH."""
    plan = gpu_check.make_plan(True, tmp_path)
    assert str(gpu_check.REPO) in plan.env["PYTHONPATH"].split(os.pathsep)


def _python_args(command: list[str], script: str) -> list[str]:
    assert command[0] == sys.executable and command[1] == script, command
    return command[2:]


def test_gpu_plan_builds_for_the_gpu_alone(gpu_plan):
    build = gpu_plan["build"]
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["GLU_FUSED_CUDA"] == "1"
    assert build.commands == [[sys.executable, "setup.py", "build_ext", "--inplace"]]


def test_tiny_plan_rebuilds_only_a_checkout_without_an_extension(tmp_path, monkeypatch):
    """The dry run does not rebuild for sm_90 what make test has just built for every
    architecture; a checkout without an extension for this Python gets the GPU run's build."""
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    bare = gpu_check.make_plan(True, tmp_path / "bare").stages[2]
    assert bare.name == "build"
    assert bare.commands == [[sys.executable, "setup.py", "build_ext", "--inplace"]]
    assert bare.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    (tmp_path / "glu_fused").mkdir()
    (tmp_path / "glu_fused" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").touch()
    built = gpu_check.make_plan(True, tmp_path / "built").stages[2]
    assert "not rebuilt" in built.commands[0][-1]


def test_gpu_plan_commands_parse(gpu_plan):
    (bench,) = gpu_plan["bench"].commands
    args = run.parse_args(_python_args(bench, "bench/run.py"))
    assert args.device == "cuda" and args.sizes and args.dtypes
    (over,) = gpu_plan["overhead"].commands
    assert overhead.parse_args(_python_args(over, "bench/overhead.py")).device == "cuda"
    memcheck, racecheck = gpu_plan["sanitizer"].commands
    for command, tool in ((memcheck, "memcheck"), (racecheck, "racecheck")):
        assert command[:3] == ["/usr/local/cuda/bin/compute-sanitizer", "--tool", tool]
        driver = command[command.index(sys.executable) :]
        assert sanitize_driver.parse_args(_python_args(driver, "bench/sanitize_driver.py"))


def test_gpu_plan_test_selection_is_valid(gpu_plan):
    """The -k expression and every option but xdist's and pytest-timeout's (not installed
    here), given to pytest for real."""
    (command,) = gpu_plan["tests"].commands
    assert "-n" in command and "--timeout" in command
    expression = command[command.index("-k") + 1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-k", expression,
         "-p", "no:cacheprovider", "tests/test_gpu.py", "tests/test_table.py"],
        capture_output=True, text=True, cwd=BENCH.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_gpu.py::test_runs_on_the_current_stream[cuda]" in done.stdout
    assert "test_cpp_table_is_the_python_table" not in done.stdout


def test_summaries_of_logs():
    assert gpu_check.sanitizer_summary(
        "========= ERROR SUMMARY: 0 errors\n========= ERROR SUMMARY: 0 errors\n"
    ) == ("ERROR SUMMARY: 0 errors; ERROR SUMMARY: 0 errors")
    table = (
        "| glu | 1.0 us | 1.1 us | 1.10x | <= 1.3x: met |\n| x | 2 | 3 | 1.5x | <= 1x: NOT met |"
    )
    assert gpu_check.overhead_summary(table) == ("1 of 2 host-time bars met")
