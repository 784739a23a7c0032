"""bench/mlp_memory.py on a small MLP: the kept bytes per token it reports are the block's
x + 4I (eager), x + 3I (lean=False), x + 2I (lean) and x (recompute), and every contender has
its peaks measured; and the lean block's step peak, measured as the benchmark does, below the
eager MLP's both where activations dominate and where the weights' gradients do."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import mlp_memory  # noqa: E402
import torch  # noqa: E402

from glu_fused import _gated_mlp  # noqa: E402
from glu_fused.nn import GatedMLP  # noqa: E402


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


def _peaks_above_the_weight_grads(h, i, tokens, blocks=1) -> dict[str, int]:
    """Each contender's step peak (bench/checks.py's CPU timeline, from no gradient held) less
    the weights' gradients (3HI float32 per block), for `blocks` MLPs of its kind one after the
    other (activations kept by each until the backward reaches it). Plus the lean block over
    two projections, as the transformers integration runs it on a Hugging Face MLP."""
    torch.manual_seed(0)
    stacks: dict[str, list] = {}
    for _ in range(blocks):
        fused = GatedMLP(h, i)
        fused.reset_parameters(std=0.02)
        named = mlp_memory.contenders(fused, torch.device("cpu"))
        named["lean, two projections"] = _TwoProjectionLean(named["eager (LLaMA MLP)"])
        for name, module in named.items():
            stacks.setdefault(name, []).append(module)
    x = torch.randn(tokens, h, requires_grad=True)
    dy = torch.randn(tokens, h)
    weight_grads = 3 * h * i * 4 * blocks
    return {
        name: mlp_memory.peaks(torch.nn.Sequential(*stack), x, dy, torch.device("cpu"))[0]
        - weight_grads
        for name, stack in stacks.items()
    }


class _TwoProjectionLean(torch.nn.Module):
    def __init__(self, eager):
        super().__init__()
        self.eager = eager

    def forward(self, x):
        m = self.eager
        block = _gated_mlp.Block("silu", layout=None)
        return _gated_mlp.apply_linears(block, x, (m.gate_proj, m.up_proj), m.down_proj)


EAGER, LEAN, RECOMPUTE = "eager (LLaMA MLP)", "GatedMLP (lean)", "GatedMLP, recompute='projection'"


def test_peak_where_activations_dominate():
    """H 64, I 176, 4096 tokens: the lean block's step peak is below the eager MLP's (it keeps
    x + 2I where eager keeps x + 4I, and its backward frees each activation once used), with
    two projections too. One block's peak is reached with the projection, h and the output
    alive, in forward or in backward, and recompute has as much then (it computes the
    projection again in backward), so its peak equals the lean one; over a stack of blocks,
    where what each keeps adds up, it is below."""
    one = _peaks_above_the_weight_grads(64, 176, 4096)
    assert one[LEAN] < one[EAGER]
    assert one["lean, two projections"] < one[EAGER]
    assert one[RECOMPUTE] <= one[LEAN]
    stack = _peaks_above_the_weight_grads(64, 176, 4096, blocks=3)
    assert stack[RECOMPUTE] < stack[LEAN] < stack[EAGER]


def test_peak_where_weight_gradients_dominate():
    """H 512, I 1376, 16 tokens: the weights' gradients are most of the peak, which comes when
    the last of them is allocated; the lean block allocates it with h and two hidden-sized
    tensors alive, the eager MLP with h and three (no slack needed: the profiler's counts are
    exact bytes)."""
    peaks = _peaks_above_the_weight_grads(512, 1376, 16)
    assert peaks[LEAN] < peaks[EAGER]
    assert peaks["lean, two projections"] < peaks[EAGER]
    assert peaks[RECOMPUTE] <= peaks[EAGER]


def test_a_contender_further_from_float32_than_twice_eager_fails_its_check():
    assert mlp_memory.check(0.009, eager_error=0.005) == "ok"
    assert mlp_memory.check(0.02, eager_error=0.005).startswith("error 0.02 against float32")
    assert mlp_memory.check(1e-5, eager_error=0.0) == "ok"  # float32: rounding alone
