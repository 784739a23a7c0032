"""The benchmark's own machinery: bytes counted as docs/contract.md says, wrong contenders caught
before timing, peak memory, and a whole small run that writes its JSON, Markdown and plots.
Speed itself is shown by `make bench`, never asserted here."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

import glu_fused
from glu_fused import reference

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
    """The check's inputs, as measure_case draws them."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = measure.random_inputs(case, CPU, generator, measure.CHECK_SCALE)
    return x, measure.random_grad(case, CPU, generator)


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
    check = measure.check_contender(case, ours, *_inputs(case))
    assert all(check.status(d) == "ok" for d in cases.DIRECTIONS)
    assert check.errors["forward"].bound_ratio <= 1 and check.errors["gradient"].bound_ratio <= 1


@pytest.mark.parametrize("function", list(cases.FUNCTIONS))
def test_peers_compute_the_function(function):
    """The code users write computes what glu_fused does (in float64, to rounding)."""
    bench_function = cases.FUNCTIONS[function]
    x = torch.randn(5, 2 * 12, dtype=torch.float64) * 4
    want = getattr(reference, bench_function.api)(x, **bench_function.call_kwargs())
    got = contenders.user_code(bench_function)(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gpt_oss_peer_is_transformers_code():
    modeling = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    gate_up = torch.randn(3, 2 * 16, dtype=torch.float64) * 8
    layer = types.SimpleNamespace(alpha=1.702, limit=7.0)
    want = modeling.GptOssExperts._apply_gate(layer, gate_up)
    assert torch.equal(contenders.gpt_oss_apply_gate(gate_up, 1.702, 7.0), want)


def _scaled_output(fn, scale):
    """Its output scaled, its gradient left right."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y * scale

        @staticmethod
        def backward(ctx, grad):
            return grad

    return lambda x: Scaled.apply(fn(x))


def _wrong_gradient(fn):
    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    return lambda x: Doubled.apply(fn(x))


def _wrong_without_autograd(fn):
    """Right when the input requires grad, wrong in the inference mode the forward is timed in."""
    return lambda x: fn(x) if x.requires_grad else fn(x) * 1.5


def _measured(case, breakage, name="broken"):
    (ours,) = contenders.make_contenders(case.function, CPU, {"ours:cpu"})
    other = contenders.Contender(name, breakage(ours.fn), ours.context)
    directions = ("forward", "backward")
    result = measure.measure_case(
        case, [ours, other], CPU, directions, 1 << 20, timing.CPU_PLAN, torch.Generator()
    )
    return result, {d.direction: set(d.median_ms) for d in result.directions}


@pytest.mark.parametrize(
    ("dtype", "breakage", "what", "still_timed"),
    [
        ("bfloat16", lambda fn: _scaled_output(fn, 1.02), "output", "backward"),
        ("float32", lambda fn: _scaled_output(fn, 1 + 3e-5), "output", "backward"),
        ("bfloat16", _wrong_gradient, "input gradient", "forward"),
        ("float32", _wrong_gradient, "input gradient", "forward"),
        ("float32", _wrong_without_autograd, "output", "backward"),
    ],
    ids=[
        "bf16-off-by-2%",
        "f32-off-by-3e-5",
        "bf16-wrong-gradient",
        "f32-wrong-gradient",
        "wrong-only-without-autograd",
    ],
)
def test_a_wrong_peer_is_left_out_of_the_directions_it_gets_wrong(
    dtype, breakage, what, still_timed
):
    case = _case("geglu", dtype)
    result, timed = _measured(case, breakage)
    assert all(s == "ok" for s in result.status["ours:cpu"].values())
    wrong_in = {"forward", "backward"} - {still_timed}
    for direction in wrong_in:
        assert result.status["broken"][direction].startswith(f"wrong: {what}")
        assert timed[direction] == {"ours:cpu"}
    assert result.status["broken"][still_timed] == "ok"
    assert timed[still_timed] == {"ours:cpu", "broken"}


def test_a_peer_less_accurate_than_ours_but_not_wrong_is_timed_and_its_error_shown():
    """bfloat16 results 0.9% off: outside glu_fused's bound (8e-3), inside torch.testing's
    (1.6e-2, with the roundings of both results)."""
    case = _case("swiglu", "bfloat16")
    result, timed = _measured(case, lambda fn: _scaled_output(fn, 1.009), name="sloppy")
    assert result.status["sloppy"]["forward"] == "ok"
    assert "sloppy" in timed["forward"]
    assert result.errors["sloppy"]["forward"]["bound_ratio"] > 1


def test_the_check_reaches_the_clamps_of_clamped_swiglu():
    """A clamped_swiglu that forgets its clamps is caught: the check's inputs go past +-7."""
    case = _case("clamped_swiglu", "float32")

    def unclamped(x):
        gate, up = x[..., ::2], x[..., 1::2]
        return gate * torch.sigmoid(1.702 * gate) * (up + 1)

    check = measure.check_contender(case, contenders.Contender("x", unclamped), *_inputs(case))
    assert check.status("forward").startswith("wrong: output")


def test_a_contender_that_raises_is_left_out_with_its_reason():
    case = _case()

    def refuses(x):
        raise NotImplementedError("no kernel for this")

    check = measure.check_contender(case, contenders.Contender("x", refuses), *_inputs(case))
    assert check.failure == "error: NotImplementedError: no kernel for this"
    assert check.status("forward") == check.failure


def test_peak_memory_of_ours_is_the_result_and_the_gradient_only():
    case = _case("swiglu", "float32", tokens=64, hidden=1024)
    named = {c.name: c for c in contenders.make_contenders(case.function, CPU)}
    x, grad = _inputs(case)
    ours = measure.check_contender(case, named["ours:cpu"], x, grad).peak
    eager = measure.check_contender(case, named["eager"], x, grad).peak
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
    check = measure.check_contender(case, contender, *_inputs(case))
    assert all(check.status(d) == "ok" for d in cases.DIRECTIONS)


def _forward_case(median_ms, kernel_ms=None):
    ok = dict.fromkeys(cases.DIRECTIONS, "ok")
    error = {"bound_ratio": 0.5, "max_abs": 0.0, "max_rel": 0.0, "wrong": None}
    return {
        "function": "glu",
        "dtype": "float32",
        "tokens": 1,
        "hidden": 4,
        "input_bytes": 32,
        "status": {name: ok for name in median_ms},
        "errors": {name: {"forward": error, "gradient": error} for name in median_ms},
        "peak_memory_bytes": dict.fromkeys(median_ms, 48),
        "directions": [
            {
                "direction": "forward",
                "bytes_moved": 48_000_000,
                "input_sets": 1,
                "median_ms": median_ms,
                "samples_ms": {},
                "calls_per_sample": {},
                "kernel_ms": kernel_ms or {},
                "kernel_samples_ms": {},
                "calls_per_graph": 0,
                "failed": {},
            }
        ],
    }


def test_report_speedups_and_copy_percentages():
    results = {
        "copy_bandwidth": {"gb_per_s": 100.0, "bytes": 2.0, "median_ms": 1.0},
        "cases": [_forward_case({"ours:cpu": 1.0, "eager": 2.0, "compile": 4.0})],
    }
    (row,) = [r for r in report.rows(results) if r.is_ours]
    assert row.gb_per_s == pytest.approx(48.0)
    assert row.pct_of_copy == pytest.approx(48.0)
    assert (row.best_peer, row.speedup_vs_best_peer) == ("eager", pytest.approx(2.0))
    assert row.kernel_ms is None and row.error == 0.5
    header, table = report.summary(results)
    assert table[0][header.index("speedup at largest")] == "2.00"
    assert "kernel speedup at largest" not in header


def test_report_kernel_times_where_there_are_some():
    """On a GPU: bandwidth from the kernel time, and both speedups, each like with like."""
    results = {
        "copy_bandwidth": {"gb_per_s": 100.0, "bytes": 2.0, "median_ms": 1.0},
        "cases": [
            _forward_case(
                {"ours:cuda": 0.020, "eager": 0.010, "liger": 0.030},
                {"ours:cuda": 1.0, "eager": 3.0, "liger": 1.5},
            )
        ],
    }
    (row,) = [r for r in report.rows(results) if r.is_ours]
    assert row.gb_per_s == pytest.approx(48.0)  # 48 MB in the 1 ms kernel time
    assert (row.best_peer, row.speedup_vs_best_peer) == ("eager", pytest.approx(0.5))
    assert (row.best_kernel_peer, row.kernel_speedup_vs_best_peer) == ("liger", pytest.approx(1.5))
    header, table = report.summary(results)
    assert table[0][header.index("speedup at largest")] == "0.50 !"
    assert table[0][header.index("kernel speedup at largest")] == "1.50"


def test_a_small_run_writes_results_summary_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (make deps installs it)")
    run.main(
        [
            "--device", "cpu",
            "--functions", "glu",
            "--dtypes", "float32",
            "--sizes", "2x64", "16x128",
            "--contenders", "ours:cpu", "eager", "compile",
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
        ok = dict.fromkeys(cases.DIRECTIONS, "ok")
        assert case["status"] == dict.fromkeys(["ours:cpu", "eager", "compile"], ok)
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


def test_report_spread_marks_a_speedup_within_it_as_level():
    """The spread from each contender's own samples (odd against even); a speedup below 1 by
    no more than it reads '~' (level), by more '!'."""
    assert report.half_spread([1.0, 1.1, 1.0, 1.1, 1.0, 1.1]) == pytest.approx(0.1)
    assert report.half_spread([1.0, 1.0, 1.0]) is None  # too few to split
    for ours_ms, mark in ((1.05, "0.95 ~"), (1.25, "0.80 !")):
        case = _forward_case({"ours:cpu": ours_ms, "eager": 1.0})
        case["directions"][0]["samples_ms"] = {
            "ours:cpu": [ours_ms, ours_ms * 1.1] * 3,
            "eager": [1.0] * 6,
        }
        results = {"copy_bandwidth": {"gb_per_s": 100.0, "bytes": 2.0, "median_ms": 1.0}}
        results["cases"] = [case]
        (row,) = [r for r in report.rows(results) if r.is_ours]
        assert row.spread == pytest.approx(0.1)
        header, table = report.summary(results)
        assert table[0][header.index("speedup at largest")] == mark
        assert table[0][header.index("worst spread %")] == "10.0"


def test_cpu_results_are_named_by_the_cpu_model_and_the_kernels_level():
    """An AVX2 and an AVX-512 machine's results go to folders of their own."""
    from glu_fused.backends import extension

    level = extension.cpu_capability()
    slug = run.device_slug(CPU)
    assert slug.startswith("cpu-") and slug.endswith(f"-{level}"), slug
    assert slug != f"cpu-{level}", "the CPU's model is missing"
    assert f"{level} kernels" in run.device_name(CPU)


def test_the_bias_benchmark_checks_its_contenders_and_writes_its_tables(tmp_path, capsys):
    import bias

    bias.main(
        ["--tokens", "8", "--hidden", "64", "--moe-tokens", "16", "--moe-hidden", "32",
         "--experts", "2", "--mlp-tokens", "8", "--mlp-hidden", "16",
         "--mlp-intermediate", "24", "--out", str(tmp_path)]
    )  # fmt: skip
    rows = json.loads((tmp_path / "bias.json").read_text())
    assert [r["case"] for r in rows] == [
        *["bias forward", "bias forward+backward"] * 2,
        *["MLP bias, training step"] * 2,
        "MoE 25% valid",
        "MoE 100% valid",
    ]
    for row in rows[:4]:
        assert set(row["ms"]) == {"ours", "eager", "compile"}
        assert max(row["error"].values()) < 0.02
    for row in rows[4:6]:
        assert set(row["ms"]) == {"ours", "ours, bias summed apart", "eager", "compile"}
        assert max(row["error"].values()) < 0.02
    table = (tmp_path / "bias.md").read_text()
    assert "| case | shape | dtype | ours ms | eager ms | compile ms |" in table
    # The ablation is no peer: the best peer is one of the users' contenders.
    assert "vs ours, bias summed apart" not in table
    assert bias._peers(rows[4]) == ["eager", "compile"]
    assert "| MoE 25% valid | 2x16x64 | bfloat16 |" in table


def test_bf16_conversion_bench_runs_and_shows_why_the_kernels_keep_integer_rounding():
    """bench/bf16_conversion.py, small: both conversions timed, and (on a CPU with AVX-512
    BF16) the instruction's results for subnormal inputs differ from the rounding the
    kernels promise (it flushes them to zero), which is why the CPU kernels keep ATen's
    integer rounding (README, CPU kernels)."""
    import bf16_conversion

    report = bf16_conversion.run(0.5, 1)
    if report.startswith("skipped:"):
        pytest.skip(report)
    assert report.count("time ") == 2 and " 0 of " in report, report
    assert "differs 1.00000022e-39: integer 0x000b, instruction 0x0000" in report, report
