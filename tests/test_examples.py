"""examples/train_tiny_lm.py runs, and its unfused and fused loss curves agree (within FP8's
tolerance with --fp8)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import glu_fused

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_tiny_lm.py"
# A model small enough to train a few steps in seconds.
TINY = "--steps 5 --batch 2 --seq-len 32 --width 32 --heads 2 --layers 1 --hidden 48".split()


def _run(*extra: str) -> subprocess.CompletedProcess:
    # One thread: the example is timed, and a second OpenMP thread on a busy 2-core machine
    # spins rather than helps.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The glu_fused under test, installed or built in place (make test-oldest builds in place).
    package_root = str(Path(glu_fused.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    "variant",
    [
        [],
        ["--layout", "interleaved", "--activation", "gelu_tanh", "--sample", "12"],
        ["--recompute"],
    ],
    ids=["swiglu-halves", "geglu-tanh-interleaved", "recompute"],
)
def test_train_tiny_lm_curves_agree(variant):
    result = _run("--log-every", "1", *variant)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.e+-]+)$", out, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    for _, ref, fused, _ in rows:
        assert abs(float(ref) - float(fused)) < 1e-4
    assert float(rows[0][1]) > float(rows[-1][1]), "five steps should lower the loss"
    worst = float(re.search(r"largest loss difference over 5 steps: (\S+)", out).group(1))
    assert worst < 1e-4
    memory = {
        name: (float(peak), float(saved))
        for name, peak, saved in re.findall(
            r"^ *(unfused|fused \(\w+\)): +[\d.]+ ms/step +peak ([\d.]+) MiB \(.+\) +"
            r"saved for backward ([\d.]+) MiB$",
            out,
            re.MULTILINE,
        )
    }
    assert len(memory) == 2 and "unfused" in memory, out
    fused_label = next(name for name in memory if name != "unfused")
    (ref_peak, ref_saved), (fused_peak, fused_saved) = memory["unfused"], memory[fused_label]
    # GatedMLP keeps x and its projection (x alone with --recompute), the unfused MLP its
    # intermediates too.
    assert 0 < fused_saved < ref_saved and 0 < fused_peak <= ref_peak


def test_train_tiny_lm_with_an_fp8_down_projection_tracks_the_unfused_curve():
    """--fp8 token: the down projection's GEMM in FP8 (the fused activation + quantization),
    backward unchanged; the loss still falls and stays within the FP8 tolerance of the
    unfused curve, yet differs from it (the FP8 path ran)."""
    result = _run("--log-every", "1", "--fp8", "token")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FP8 down projection (token)" in out
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.e+-]+)$", out, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[0][2]) > float(rows[-1][2]), "five steps should lower the loss"
    diffs = [abs(float(ref) - float(fused)) for _, ref, fused, _ in rows]
    assert max(diffs) < 5e-2 and max(diffs) > 0


def test_train_tiny_lm_fails_when_the_curves_differ():
    """The exit status is the check: a tolerance no run can meet must fail."""
    result = _run("--tolerance", "-1")
    assert result.returncode == 1
    assert "the loss curves differ" in result.stderr
