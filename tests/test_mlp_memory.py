"""bench/mlp_memory.py on a small MLP: the kept bytes per token it reports are the block's
x + 4I (eager), x + 3I (lean=False), x + 2I (lean) and x (recompute), and every contender has
its peaks measured."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import mlp_memory  # noqa: E402


def test_small_run_reports_the_expected_kept_bytes(tmp_path):
    h, i, tokens = 48, 136, 8
    out = tmp_path / "mlp_memory.md"
    args = ["--device", "cpu", "--dtype", "float32", "--hidden", str(h)]
    args += ["--intermediate", str(i), "--tokens", str(tokens), "--repeats", "1", "--out", str(out)]
    rows = mlp_memory.main(args)
    expected = {
        "eager (LLaMA MLP)": h + 4 * i,
        "GatedMLP, lean=False": h + 3 * i,
        "GatedMLP (lean)": h + 2 * i,
        "GatedMLP, recompute='projection'": h,
    }
    assert {r["contender"]: r["kept_bytes_per_token"] for r in rows} == {
        name: 4 * n for name, n in expected.items()
    }
    for r in rows:
        assert r["status"] == "ok"
        # At least the weights' gradients (3HI float32) are allocated in a step.
        assert r["peak_bytes"] >= 3 * h * i * 4
        assert r["backward_peak_bytes"] is not None and r["backward_peak_bytes"] > 0
    assert "| 8 | GatedMLP (lean) | " in out.read_text()
