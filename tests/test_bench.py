"""The benchmark's own machinery: bytes counted as docs/contract.md says, wrong contenders caught
before timing, peak memory, and a whole small run that writes its JSON, Markdown and plots.
Speed itself is shown by `make bench`, never asserted here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import glu_fused

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cases  # noqa: E402
import contenders  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import timing  # noqa: E402

CPU = torch.device("cpu")


def _case(function="swiglu", dtype="float32", tokens=8, hidden=96):
    return cases.Case(cases.FUNCTIONS[function], dtype, tokens, hidden)


def _inputs(case):
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    return measure.random_inputs(case, CPU, generator), measure.random_grad(case, CPU, generator)


@pytest.mark.parametrize("dtype", list(cases.DTYPES))
def test_bytes_moved_reads_inputs_and_writes_outputs_once(dtype):
    case = _case(dtype=dtype, tokens=3, hidden=40)
    itemsize = torch.empty((), dtype=cases.DTYPES[dtype]).element_size()
    x, y = 3 * 80 * itemsize, 3 * 40 * itemsize
    assert case.input_bytes == x
    assert case.bytes_moved("forward") == x + y
    assert case.bytes_moved("backward") == x + y + x  # x and grad_y in, grad_x out
    assert case.bytes_moved("forward+backward") == 2 * x + 2 * y + x


def test_sizes_parse_and_bad_ones_are_named():
    assert cases.parse_shape("1024x4096") == (1024, 4096)
    for bad in ("1024", "0x4096", "ax4"):
        with pytest.raises(ValueError, match="TOKENSxHIDDEN|positive"):
            cases.parse_shape(bad)


def test_sweep_groups_cases_for_one_compile_per_function_dtype_and_hidden():
    sweep = cases.Sweep(("glu", "reglu"), ("float32",), ((16, 64), (1, 128), (4, 64)))
    keys = [(c.function.name, c.dtype, c.hidden) for c in sweep.cases()]
    assert len(keys) == 6
    changes = sum(a != b for a, b in zip(keys, keys[1:]))
    assert changes == len(set(keys)) - 1


def test_inputs_rotate_only_when_they_fit_in_the_cache():
    cache = 32 << 20
    assert timing.input_sets_needed(256 << 20, cache) == 1
    assert timing.input_sets_needed(16 << 20, cache) == 4
    assert timing.input_sets_needed(1, cache) == timing.MAX_INPUT_SETS


@pytest.mark.parametrize("function", list(cases.FUNCTIONS))
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_our_contender_passes_the_check(function, dtype):
    case = _case(function, dtype)
    (ours,) = contenders.make_contenders(case.function, CPU, {"ours:cpu"})
    status, _ = measure.check_contender(case, ours, *_inputs(case))
    assert status == "ok"


def _scaled(fn, scale):
    return lambda x: fn(x) * scale


def _wrong_gradient(fn):
    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    return lambda x: Doubled.apply(fn(x))


@pytest.mark.parametrize(
    ("dtype", "breakage", "what"),
    [
        ("bfloat16", lambda fn: _scaled(fn, 1.02), "output"),
        ("float32", lambda fn: _scaled(fn, 1 + 3e-5), "output"),
        ("bfloat16", _wrong_gradient, "input gradient"),
        ("float32", _wrong_gradient, "input gradient"),
    ],
    ids=["bf16-off-by-2%", "f32-off-by-3e-5", "bf16-wrong-gradient", "f32-wrong-gradient"],
)
def test_a_wrong_contender_is_left_out_before_timing(dtype, breakage, what):
    case = _case("geglu", dtype)
    (ours,) = contenders.make_contenders(case.function, CPU, {"ours:cpu"})
    broken = contenders.Contender("broken", breakage(ours.fn), ours.context)
    result = measure.measure_case(
        case, [ours, broken], CPU, ("forward",), 1 << 20, timing.CPU_PLAN, torch.Generator()
    )
    assert result.status["ours:cpu"] == "ok"
    assert result.status["broken"].startswith(f"wrong: {what}")
    assert set(result.directions[0].median_ms) == {"ours:cpu"}


def test_a_contender_that_raises_is_left_out_with_its_reason():
    case = _case()

    def refuses(x):
        raise NotImplementedError("no kernel for this")

    status, _ = measure.check_contender(case, contenders.Contender("x", refuses), *_inputs(case))
    assert status == "error: NotImplementedError: no kernel for this"


def test_peak_memory_of_ours_is_the_result_and_the_gradient_only():
    case = _case("swiglu", "float32", tokens=64, hidden=1024)
    named = {c.name: c for c in contenders.make_contenders(case.function, CPU)}
    x, grad = _inputs(case)
    _, ours = measure.check_contender(case, named["ours:cpu"], x, grad)
    _, eager = measure.check_contender(case, named["eager"], x, grad)
    assert ours == case.input_bytes // 2 + case.input_bytes
    assert eager > ours


@pytest.mark.parametrize("name", ["ours:triton", "liger"])
def test_triton_contenders_pass_the_check_in_the_interpreter(name):
    if torch.cuda.is_available():
        pytest.skip("covered natively by the GPU run of make bench")
    if name == "liger" and not contenders.liger_available():
        pytest.skip("liger-kernel is not installed")
    triton_status = glu_fused.backend_status()["triton"]
    if triton_status != "available":
        pytest.skip(f"triton: {triton_status}")
    case = _case("swiglu", "float32", tokens=4, hidden=64)
    (contender,) = contenders.make_contenders(case.function, CPU, {name})
    status, _ = measure.check_contender(case, contender, *_inputs(case))
    assert status == "ok"


def test_report_speedups_and_copy_percentages():
    results = {
        "copy_bandwidth": {"gb_per_s": 100.0, "bytes": 2.0, "median_ms": 1.0},
        "cases": [
            {
                "function": "glu",
                "dtype": "float32",
                "tokens": 1,
                "hidden": 4,
                "input_bytes": 32,
                "status": {"ours:cpu": "ok", "F.glu": "ok", "eager": "ok"},
                "peak_memory_bytes": {"ours:cpu": 48, "F.glu": 48, "eager": 96},
                "directions": [
                    {
                        "direction": "forward",
                        "bytes_moved": 48_000_000,
                        "input_sets": 1,
                        "median_ms": {"ours:cpu": 1.0, "F.glu": 2.0, "eager": 4.0},
                        "samples_ms": {},
                        "calls_per_sample": {},
                        "failed": {},
                    }
                ],
            }
        ],
    }
    (row,) = [r for r in report.rows(results) if r.is_ours]
    assert row.gb_per_s == pytest.approx(48.0)
    assert row.pct_of_copy == pytest.approx(48.0)
    assert (row.best_peer, row.speedup_vs_best_peer) == ("F.glu", pytest.approx(2.0))
    header, table = report.summary(results)
    assert table[0][header.index("speedup at largest")] == "2.00"


def test_a_small_run_writes_results_summary_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (make deps installs it)")
    run.main(
        [
            "--device", "cpu",
            "--functions", "glu",
            "--dtypes", "float32",
            "--sizes", "2x64", "16x128",
            "--contenders", "ours:cpu", "F.glu", "eager", "compile",
            "--out", str(tmp_path),
            "--seed", "7",
        ]
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["seed"] == 7
    assert results["copy_bandwidth"]["gb_per_s"] > 0
    assert results["environment"]["git"]["commit"]
    assert [(c["tokens"], c["hidden"]) for c in results["cases"]] == [(2, 64), (16, 128)]
    for case in results["cases"]:
        assert case["status"] == dict.fromkeys(["ours:cpu", "F.glu", "eager", "compile"], "ok")
        assert [d["direction"] for d in case["directions"]] == list(cases.DIRECTIONS)
        for direction in case["directions"]:
            assert direction["failed"] == {}
            assert set(direction["median_ms"]) == set(case["status"])
            assert all(
                len(s) >= timing.CPU_PLAN.min_rounds for s in direction["samples_ms"].values()
            )
    summary = (tmp_path / "summary.md").read_text()
    assert "| glu | float32 | forward | cpu |" in summary
    assert "![bandwidth_float32.png](bandwidth_float32.png)" in summary
    assert (tmp_path / "bandwidth_float32.png").read_bytes()[:4] == b"\x89PNG"
    assert "ours:cpu speedup" in capsys.readouterr().out
