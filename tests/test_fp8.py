"""FP8 output (docs/contract.md, "FP8 output"): every backend's (q, scale) is bit for bit the
rule of glu_fused/_fp8.py applied, in plain PyTorch, to that backend's own plain result; the
rule itself against values worked out by hand; the scales' dtypes and layouts as the GEMMs
take them; bad arguments; autograd's refusal; torch.compile and opcheck.

What runs (tests/covering.py), one pytest item per backend looping over its combinations:
* packed: function x dtype x FP8 type x mode (granularity, scale dtype, rounding, layout,
  intermediate, static scale) x case (shapes, strides, odd sizes that must be refused, empty)
  x values (random, or with zero blocks, NaN, infinities and clamped_swiglu's limits
  planted) x layout, as a covering design: every pair, and mode x values x FP8 type and
  dtype x case in full (the rule's branches meet every value kind; the kernels' paths every
  dtype);
* gated: activation x dtype x mode x values x shape (rows of 256, and of 37), every pair,
  mode x values x shape in full;
* the Triton interpreter takes a tenth of the packed rows (each launch is dear there).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import (
    ACTIVATIONS,
    DTYPES,
    FUNCTION_IDS,
    FUNCTIONS,
    backend_params,
    device_of,
    fused,
    interpreted,
    random_input,
)
from covering import design, each

import glu_fused
from glu_fused import _fp8, reference

E4M3, E5M2, E8M0 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu
FP8_TYPES = [E4M3, E5M2]

# The modes a test loops over: the public keywords besides out_dtype. "scale" marks a static
# scale, made per input (a value near the result's amax).
MODES = {
    "tensor": {"granularity": "tensor"},
    "tensor-e8m0": {"granularity": "tensor", "scale_dtype": E8M0},
    "tensor-static": {"granularity": "tensor", "scale": "static"},
    "token": {},
    "token-column": {"granularity": "token", "scale_layout": "column"},
    "token-e8m0-floor": {"scale_dtype": E8M0, "scale_rounding": "floor"},
    "token-float32": {"intermediate": "float32"},
    "group128": {"granularity": "group"},
    "group64-column": {"granularity": "group", "group_size": 64, "scale_layout": "column"},
    "group128-e8m0": {"granularity": "group", "scale_dtype": E8M0},
    "group128-int32-column": {
        "granularity": "group",
        "scale_dtype": torch.int32,
        "scale_layout": "column",
    },
    "group64-int32-floor": {
        "granularity": "group",
        "group_size": 64,
        "scale_dtype": torch.int32,
        "scale_rounding": "floor",
    },
    "mx": {"granularity": "mx"},
    "mx-floor-column": {"granularity": "mx", "scale_rounding": "floor", "scale_layout": "column"},
    "mx-int32": {"granularity": "mx", "scale_dtype": torch.int32},
    "mx-float32-intermediate": {"granularity": "mx", "intermediate": "float32"},
}


def _block(mode: dict) -> int:
    granularity = mode.get("granularity", "tensor" if "scale" in mode else "token")
    return {"group": mode.get("group_size", 128), "mx": 32}.get(granularity, 0)


def _sliced(rows, last, dtype, device):
    return random_input((rows, last + 8), dtype, device)[:, 3 : 3 + last]


# name -> make(dtype, device) -> x split along its last dim. Halved sizes are multiples of
# 128 except "odd", which the block modes must refuse.
CASES = {
    "2d": lambda dt, dev: random_input((6, 2 * 256), dt, dev),
    "3d": lambda dt, dev: random_input((2, 3, 2 * 128), dt, dev),
    "row-strided": lambda dt, dev: _sliced(5, 2 * 128, dt, dev),
    "transposed": lambda dt, dev: random_input((2 * 128, 5), dt, dev).t(),
    "expanded": lambda dt, dev: random_input((1, 2 * 128), dt, dev).expand(4, 2 * 128),
    "long-rows": lambda dt, dev: random_input((3, 2 * 2304), dt, dev),
    "odd": lambda dt, dev: random_input((3, 2 * 37), dt, dev),
    "empty-rows": lambda dt, dev: random_input((0, 2 * 128), dt, dev),
}


def plant_specials(x: torch.Tensor, halves: bool) -> torch.Tensor:
    """x with the values the rule treats specially planted in its first rows: a block of
    zeros (both halves: a zero result for every function), a NaN, an infinite value with a
    large gate, and inputs past clamped_swiglu's limits."""
    x = x.clone()
    n = x.shape[-1] // 2
    if x.numel() == 0 or x.dim() < 2 or x.shape[-2] < 3:
        return x
    gate = (lambda i: i) if halves else (lambda i: 2 * i)
    value = (lambda i: n + i) if halves else (lambda i: 2 * i + 1)
    for i in range(min(n, 64)):
        x[..., 0, gate(i)] = 0
        x[..., 0, value(i)] = 0
    x[..., 1, gate(min(5, n - 1))] = float("nan")
    x[..., 2, gate(0)] = 3.0
    x[..., 2, value(0)] = float("inf")
    x[..., 2, gate(1)] = 40.0  # past clamped_swiglu's limit (7, or 2.5)
    x[..., 2, value(1)] = -30.0
    return x


def _options(mode: dict, y: torch.Tensor) -> dict:
    """The keywords of a mode; a static scale from the plain result's amax (times 0.75, so
    some elements saturate)."""
    options = dict(mode)
    if options.get("scale") == "static":
        finite = y.float().nan_to_num(0, 0, 0).abs()
        amax = finite.max().item() if finite.numel() else 1.0
        options["scale"] = torch.tensor([max(amax, 1e-3) * 0.75 / 448], device=y.device)
    return options


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """a and b hold the same bits, every NaN excepted only as a NaN of either sign."""
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype}, expected {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)}, expected {tuple(b.shape)}"
    assert a.stride() == b.stride(), f"{what}: strides {a.stride()}, expected {b.stride()}"
    if a.dtype == torch.int32:
        same = a == b
    else:
        nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
        assert torch.equal(nan_a, nan_b), f"{what}: NaN in other places"
        bits = {1: torch.uint8, 4: torch.int32}[a.element_size()]
        same = (a.contiguous().view(bits) == b.contiguous().view(bits)) | nan_a
    bad = (~same).nonzero()
    assert bad.numel() == 0, (
        f"{what}: {bad.shape[0]} of {a.numel()} differ, first at {bad[0].tolist()}: "
        f"{a[tuple(bad[0])].float().item()} vs {b[tuple(bad[0])].float().item()}"
    )


def _rule(y: torch.Tensor, out_dtype, options: dict):
    """The rule of glu_fused/_fp8.py on y, for the public keywords."""
    scale = options.get("scale")
    args = _fp8.resolve(out_dtype, **options)
    return _fp8.quantize(y, args, scale)


def _check_against_rule(backend, call, plain, mode, out_dtype, dtype, block, last):
    """call(**options) -> (q, scale) and plain(float32?) -> y on one backend, held together."""
    with glu_fused.use_backend(backend), torch.no_grad():
        y = plain(mode.get("intermediate") == "float32")
        options = _options(mode, y)
        if block and last % block:
            with pytest.raises(ValueError, match="multiple of"):
                call(out_dtype=out_dtype, **options)
            return
        q, scale = call(out_dtype=out_dtype, **options)
    expected_q, expected_scale = _rule(y, out_dtype, options)
    assert_same_bits(q, expected_q, "q")
    assert_same_bits(scale, expected_scale, "scale")


def _check_packed(backend, function, dtype, out_dtype, mode, case, values, layout):
    name, kwargs = FUNCTIONS[FUNCTION_IDS.index(function)]
    x = CASES[case](dtype, device_of(backend))
    if values == "specials":
        x = plant_specials(x, layout == "halves")
    mode = MODES[mode]

    def plain(float32: bool):
        # intermediate="float32": the plain kernel on float32 inputs computes the same
        # float32 activation, not rounded (float64 inputs: computed in float64).
        xin = x.float() if float32 and dtype in (torch.float16, torch.bfloat16) else x
        return fused(name)(xin, layout=layout, **kwargs)

    def call(**options):
        return fused(name)(x, layout=layout, **kwargs, **options)

    _check_against_rule(
        backend, call, plain, mode, out_dtype, dtype, _block(mode), x.shape[-1] // 2
    )


PACKED_PARAMS = {
    "function": FUNCTION_IDS,
    "dtype": DTYPES,
    "out_dtype": FP8_TYPES,
    "mode": list(MODES),
    "case": list(CASES),
    "values": ["random", "specials"],
    "layout": ["halves", "interleaved"],
}
PACKED_ROWS = design(PACKED_PARAMS, [("mode", "values", "out_dtype"), ("dtype", "case")])


@pytest.mark.parametrize("backend", backend_params())
def test_packed_fp8_is_the_rule_applied_to_the_plain_result(backend):
    rows = PACKED_ROWS[::10] if interpreted(backend) else PACKED_ROWS
    each(rows, lambda **row: _check_packed(backend, **row))


# gated shapes: rows of 256, and of 37 (odd: refused by the block modes; a contiguous pair
# is one run of rows that are not whole vector blocks).
GATED_SHAPES = {"4x256": (4, 256), "5x37": (5, 37)}


def _check_gated(backend, activation, dtype, out_dtype, mode, values, shape):
    device = device_of(backend)
    size = GATED_SHAPES[shape]
    gate, value = random_input(size, dtype, device), random_input(size, dtype, device)
    if values == "specials":
        gate[0, : size[-1] // 2] = 0
        gate[1, 7] = float("nan")
        gate[2, 0], value[2, 0] = 3.0, float("inf")
    mode = MODES[mode]

    def plain(float32: bool):
        wide = float32 and dtype in (torch.float16, torch.bfloat16)
        g, v = (gate.float(), value.float()) if wide else (gate, value)
        return glu_fused.gated(g, v, activation)

    def call(**options):
        return glu_fused.gated(gate, value, activation, **options)

    _check_against_rule(backend, call, plain, mode, out_dtype, dtype, _block(mode), size[-1])


GATED_ROWS = design(
    {
        "activation": list(ACTIVATIONS),
        "dtype": DTYPES,
        "out_dtype": FP8_TYPES,
        "mode": list(MODES),
        "values": ["random", "specials"],
        "shape": list(GATED_SHAPES),
    },
    [("mode", "values", "shape")],
)


@pytest.mark.parametrize("backend", backend_params())
def test_gated_fp8_is_the_rule_applied_to_the_plain_result(backend):
    rows = GATED_ROWS[::8] if interpreted(backend) else GATED_ROWS
    each(rows, lambda **row: _check_gated(backend, **row))


# ---- the rule against values worked out by hand ---------------------------------------------


def _quantize_row(backend, row, out_dtype=E4M3, **options):
    """relu(gate) * 1 for one row of float32 gates: y is the row itself where positive."""
    gate = torch.tensor([row], dtype=torch.float32)
    with glu_fused.use_backend(backend), torch.no_grad():
        return glu_fused.gated(gate, torch.ones_like(gate), "relu", out_dtype=out_dtype, **options)


RULE_BACKENDS = backend_params(("cpu", "reference"))


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_amax_of_448_times_a_power_of_two_gives_that_power(backend):
    for k in (-20, -3, 0, 5, 30):
        amax = 448.0 * 2.0**k
        row = [amax, amax / 3, 1e-30, 0.0] * 8
        for options in ({}, {"scale_dtype": E8M0}, {"granularity": "mx"}):
            q, s = _quantize_row(backend, row, **options)
            assert s.float().flatten()[0].item() == 2.0**k, (k, options, s)
            assert q[0, 0].view(torch.uint8).item() == 0x7E, (k, options)  # 448, e4m3's max


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_scales_round_up_to_powers_of_two_and_floor_is_the_ocp_rule(backend):
    # amax 500: 500 / 448 = 1.116 -> ceil 2; floor: 2^(floor(log2 500) - 8) = 2^0 = 1,
    # and 500 saturates to 448 under it.
    row = [500.0] + [1.0] * 31
    _, s = _quantize_row(backend, row, scale_dtype=E8M0)
    assert s.float().item() == 2.0
    q, s = _quantize_row(backend, row, scale_dtype=E8M0, scale_rounding="floor")
    assert s.float().item() == 1.0
    assert q.float()[0, 0].item() == 448.0


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_ties_round_to_even_and_subnormals_survive(backend):
    # Scale 1 (amax 448): e4m3 spacing is 1/8 in [1, 2): 1.0625 ties to 1.0 and 1.1875 to
    # 1.25; 2^-9 is e4m3's least subnormal, 3 * 2^-10 ties to 2^-8 (even mantissa).
    row = [448.0, 1.0625, 1.1875, 2.0**-9, 3 * 2.0**-10, 2.0**-11] + [1.0] * 26
    q, s = _quantize_row(backend, row, granularity="tensor")
    assert s.item() == 1.0
    assert q.float()[0, :6].tolist() == [448.0, 1.0, 1.25, 2.0**-9, 2.0**-8, 0.0]


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_zero_nan_and_infinite_blocks(backend):
    row = [0.0] * 32 + [float("nan")] + [1.0] * 31 + [float("inf")] + [1.0] * 31
    q, s = _quantize_row(backend, row, granularity="mx")
    s = s.float()[0]
    # eps / 448 = 2.23e-13, rounded up to a power of two: 2^-42 = 2.27e-13.
    assert s[0].item() == 2.0**-42
    assert (q.float()[0, :32] == 0).all(), "an all-zero block quantizes to zeros"
    assert torch.isnan(s[1]) and torch.isnan(q.float()[0, 32:64]).all()
    assert torch.isnan(s[2]), "an infinite amax: E8M0 has no infinity"
    q, s = _quantize_row(backend, row[64:], granularity="token")
    assert s.item() == float("inf"), "an infinite amax, an infinite float32 scale"
    q = q.float()[0]
    assert torch.isnan(q[0]) and (q[1:] == 0).all(), "r = 0: inf * 0 is NaN, the rest 0"
    q, s = _quantize_row(backend, [0.0] * 32, granularity="token")
    assert s.item() == (torch.tensor([1e-10]) / torch.tensor([448.0])).item()
    assert (q.float() == 0).all()


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_the_scale_divides_and_q_times_scale_approximates_y(backend):
    x = random_input((8, 2 * 256), torch.bfloat16)
    with glu_fused.use_backend(backend), torch.no_grad():
        y = glu_fused.swiglu(x).float()
        for granularity in ("tensor", "token", "group", "mx"):
            for out_dtype, rel in ((E4M3, 2.0**-4), (E5M2, 2.0**-3)):
                q, s = glu_fused.swiglu(x, out_dtype=out_dtype, granularity=granularity)
                args = _fp8.resolve(out_dtype, granularity)
                back = _fp8.dequantize(q, s, args)
                # Relative to each element, plus the block's subnormal floor.
                assert ((back - y).abs() <= rel * y.abs() + 2e-3 * y.abs().max()).all()


def test_int32_scales_pack_four_e8m0_bytes_lowest_first():
    x = random_input((3, 2 * 32 * 6), torch.float32)  # 6 mx blocks: two words, one padded
    with torch.no_grad():
        _, e8m0 = glu_fused.swiglu(x, out_dtype=E4M3, granularity="mx")
        _, packed = glu_fused.swiglu(x, out_dtype=E4M3, granularity="mx", scale_dtype=torch.int32)
    raw = e8m0.view(torch.uint8).long()
    words = packed.long() & 0xFFFFFFFF
    assert packed.shape == (3, 2)
    expected0 = raw[:, 0] | raw[:, 1] << 8 | raw[:, 2] << 16 | raw[:, 3] << 24
    assert torch.equal(words[:, 0], expected0)
    assert torch.equal(words[:, 1], raw[:, 4] | raw[:, 5] << 8), "padding bytes are zero"


def test_column_scales_are_token_major_and_padded_to_four_tokens():
    x = random_input((2, 3, 2 * 256), torch.bfloat16)
    with torch.no_grad():
        _, row = glu_fused.swiglu(x, out_dtype=E4M3, granularity="group")
        _, col = glu_fused.swiglu(x, out_dtype=E4M3, granularity="group", scale_layout="column")
    assert col.shape == row.shape == (2, 3, 2)
    assert col.stride() == (3, 1, 8), "6 tokens padded to 8, stride 1 along them"
    assert torch.equal(col, row)


def test_scales_feed_scaled_mm_as_dequantization_scales():
    """torch._scaled_mm(q, w, scale_a, scale_b) with our q and scales: the product of the
    dequantized operands, tensor-wise and row-wise."""
    x = random_input((16, 2 * 64), torch.bfloat16)
    w = random_input((64, 32), torch.float32, scale=0.1)
    w_scale = w.abs().max() / 448
    wq = (w / w_scale).to(E4M3)
    w_back = wq.float() * w_scale
    wq_t = wq.t().contiguous().t()  # column-major, as _scaled_mm takes its second operand
    cases = [("tensor", w_scale.reshape(1)), ("token", w_scale.expand(1, 32).contiguous())]
    if not _fp8._CPU_SCALES_ROWS:  # torch 2.11's CPU _scaled_mm: per-tensor scales only
        cases = cases[:1]
    with torch.no_grad():
        for granularity, scale_b in cases:
            q, s = glu_fused.swiglu(x, out_dtype=E4M3, granularity=granularity)
            out = torch._scaled_mm(q, wq_t, s, scale_b, out_dtype=torch.float32)
            expected = (q.float() * s) @ w_back  # s: (1,) or (16, 1)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ---- intermediate, formats, threads ---------------------------------------------------------


@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_rounding_to_the_input_dtype_comes_first_unless_float32(backend):
    x = random_input((16, 2 * 128), torch.bfloat16)
    with glu_fused.use_backend(backend), torch.no_grad():
        q_in, _ = glu_fused.swiglu(x, out_dtype=E4M3)
        q_32, _ = glu_fused.swiglu(x, out_dtype=E4M3, intermediate="float32")
    assert not torch.equal(q_in.view(torch.uint8), q_32.view(torch.uint8)), (
        "rounding to bfloat16 first changes some q (else this test checks nothing)"
    )


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fnuz"), reason="this torch has no fnuz types")
@pytest.mark.parametrize("backend", RULE_BACKENDS)
def test_fnuz_formats(backend):
    x = plant_specials(random_input((4, 2 * 128), torch.float16), True)
    for out_dtype in (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz):
        with glu_fused.use_backend(backend), torch.no_grad():
            y = glu_fused.swiglu(x)
            q, s = glu_fused.swiglu(x, out_dtype=out_dtype, granularity="group")
        expected_q, expected_s = _rule(y, out_dtype, {"granularity": "group"})
        assert_same_bits(q, expected_q, f"{out_dtype} q")
        assert_same_bits(s, expected_s, f"{out_dtype} scale")


def test_the_tensor_amax_does_not_depend_on_the_thread_split():
    """The per-tensor amax is every thread's: the largest result sits in the last row, which
    the first thread never sees when there are several."""
    x = random_input((64, 2 * 4096), torch.bfloat16)
    x[-1, -4096], x[-1, -1] = 40.0, 40.0  # gate and up of the last row's last element
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.no_grad():
                results.append(glu_fused.swiglu(x, out_dtype=E4M3, granularity="tensor"))
    finally:
        torch.set_num_threads(threads)
    for q, scale in results[1:]:
        assert_same_bits(q, results[0][0], "q")
        assert_same_bits(scale, results[0][1], "scale")
    amax = glu_fused.swiglu(x).float().abs().max()
    assert results[0][1].item() == (amax / torch.tensor(448.0)).item()


def _assert_per_tensor_fp8_is_the_rule(x: torch.Tensor, what: str) -> None:
    """swiglu(x)'s dynamic per-tensor e4m3 (q, scale): bit for bit the rule on its plain result."""
    with torch.no_grad():
        y = glu_fused.swiglu(x)
        q, s = glu_fused.swiglu(x, out_dtype=E4M3, granularity="tensor")
    expected_q, expected_s = _rule(y, E4M3, {"granularity": "tensor"})
    assert_same_bits(q, expected_q, f"q, {what}")
    assert_same_bits(s, expected_s, f"scale, {what}")


def test_a_tensor_past_the_kept_activations_limit_computes_them_twice_alike():
    """Per-tensor scales above 2^22 elements: the second pass computes the activations again
    instead of keeping them (csrc/cpu/glu_cpu.cpp, kFp8ScratchElements); the same bits."""
    x = random_input((1025, 2 * 4096), torch.bfloat16)  # 4198400 results
    x[-1, 0], x[-1, 4096] = 30.0, 30.0
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _assert_per_tensor_fp8_is_the_rule(x, f"{n} threads")
    finally:
        torch.set_num_threads(threads)


def test_the_kept_activations_buffer_is_reused_across_sizes_and_threads():
    """The per-tensor scale's kept activations live in a buffer the calling thread keeps from
    call to call (csrc/cpu/glu_cpu.cpp, tensor_scratch): calls of growing and shrinking sizes,
    in this thread and in another, each the rule applied to its own plain result."""
    import threading

    def check(rows, what):
        _assert_per_tensor_fp8_is_the_rule(random_input((rows, 2 * 96), torch.bfloat16), what)

    sizes = (7, 300, 5, 1000, 64)
    for rows in sizes:
        check(rows, f"{rows} rows")
    failures = []

    def other():
        try:
            for rows in reversed(sizes):
                check(rows, f"{rows} rows, another thread")
        except AssertionError as error:
            failures.append(error)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert not failures, failures[0]


# ---- autograd ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params(("cpu", "reference")))
def test_a_quantized_call_that_would_record_a_graph_is_refused(backend):
    x = random_input((4, 2 * 32), torch.bfloat16).requires_grad_()
    gate, value = random_input((4, 32), torch.float32), random_input((4, 32), torch.float32)
    with glu_fused.use_backend(backend):
        with pytest.raises(RuntimeError, match="torch.no_grad"):
            glu_fused.swiglu(x, out_dtype=E4M3)
        with pytest.raises(RuntimeError, match="cannot carry a gradient"):
            glu_fused.gated(gate, value.requires_grad_(), out_dtype=E4M3)
        with torch.no_grad():
            q, _ = glu_fused.swiglu(x, out_dtype=E4M3)
        with torch.inference_mode():
            q2, _ = glu_fused.swiglu(x, out_dtype=E4M3)
    assert not q.requires_grad and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))


# ---- bad arguments ------------------------------------------------------------------------

_F32 = torch.float32
# (what, the op's trailing FP8 arguments, exception, message) for a (4, 2 * 192) input.
# The op's order: out_dtype, granularity, group_size, scale_dtype, scale_rounding,
# scale_layout, intermediate, eps, scale.
_GOOD = (E4M3, "group", 32 * 2, _F32, "ceil", "row", "input", 1e-10, None)


def _with(**changes):
    names = [f.name for f in dataclasses.fields(_fp8.Fp8Args)] + ["scale"]
    args = dict(zip(names, _GOOD))
    args.update(changes)
    return tuple(args.values())


BAD_OP_ARGS = {
    "non-FP8 out_dtype": (_with(out_dtype=torch.float16), TypeError, "must be the input's"),
    "unknown granularity": (_with(granularity="block"), ValueError, "unknown granularity"),
    "unknown rounding": (_with(scale_rounding="up"), ValueError, "unknown scale_rounding"),
    "unknown layout": (_with(scale_layout="col"), ValueError, "unknown scale_layout"),
    "unknown intermediate": (_with(intermediate="f32"), ValueError, "unknown intermediate"),
    "group_size 32": (_with(group_size=32), ValueError, "group_size must be 64 or 128"),
    "mx of 64": (_with(granularity="mx", group_size=64), ValueError, "blocks of 32"),
    "token with a group": (_with(granularity="token"), ValueError, "takes no group_size"),
    "scale dtype": (_with(scale_dtype=torch.float16), TypeError, "scale_dtype must be"),
    "mx float32 scales": (_with(granularity="mx", group_size=32), ValueError, "E8M0 scales"),
    "int32 per token": (
        _with(granularity="token", group_size=0, scale_dtype=torch.int32),
        ValueError,
        "pack four",
    ),
    "column per tensor": (
        _with(granularity="tensor", group_size=0, scale_layout="column"),
        ValueError,
        "one scale",
    ),
    "eps zero": (_with(eps=0.0), ValueError, "eps must be finite"),
    "eps inf": (_with(eps=float("inf")), ValueError, "eps must be finite"),
    "not a multiple": (_with(group_size=128), ValueError, "multiple of 128, got 192"),
    "static per group": (_with(scale=torch.ones(1)), ValueError, "one per tensor"),
    "static e8m0": (
        _with(granularity="tensor", group_size=0, scale_dtype=E8M0, scale=torch.ones(1)),
        ValueError,
        "static scale is float32",
    ),
    "static of two": (
        _with(granularity="tensor", group_size=0, scale=torch.ones(2)),
        ValueError,
        "one-element float32",
    ),
    "static float64": (
        _with(granularity="tensor", group_size=0, scale=torch.ones(1, dtype=torch.float64)),
        ValueError,
        "one-element float32",
    ),
    "static on meta": (
        _with(granularity="tensor", group_size=0, scale=torch.ones(1, device="meta")),
        ValueError,
        "on the input's device",
    ),
}


def _message(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return type(e), str(e).split("\n")[0]
    return None, "no error"


@pytest.mark.parametrize("what", list(BAD_OP_ARGS))
def test_bad_fp8_arguments_raise_the_same_error_from_op_and_reference(what):
    args, exception, words = BAD_OP_ARGS[what]
    x = random_input((4, 2 * 192), torch.bfloat16)
    op = torch.ops.glu_fused.glu_forward_fp8
    from_op = _message(lambda: op(x, -1, "swiglu", "halves", 1.702, 7.0, *args))
    from_reference = _message(
        lambda: reference.packed_fp8(x, -1, "swiglu", "halves", 1.702, 7.0, *args)
    )
    assert from_op[0] is exception and words in from_op[1], from_op
    assert from_op == from_reference
    gate = x[:, :192]
    gated_op = _message(lambda: torch.ops.glu_fused.gated_forward_fp8(gate, gate, "silu", *args))
    gated_reference = _message(lambda: reference.gated_fp8(gate, gate, "silu", *args))
    assert gated_op == gated_reference == from_op


def test_fp8_needs_the_last_dim():
    x = random_input((2 * 128, 4), torch.float32)
    op = torch.ops.glu_fused.glu_forward_fp8
    args = _with(granularity="token", group_size=0)
    from_op = _message(lambda: op(x, 0, "swiglu", "halves", 1.702, 7.0, *args))
    assert from_op == _message(
        lambda: reference.packed_fp8(x, 0, "swiglu", "halves", 1.702, 7.0, *args)
    )
    assert from_op[0] is ValueError and "last dim" in from_op[1]
    scalar = torch.tensor(1.0)
    gated = _message(lambda: torch.ops.glu_fused.gated_forward_fp8(scalar, scalar, "silu", *args))
    assert gated == _message(lambda: reference.gated_fp8(scalar, scalar, "silu", *args))
    assert gated[0] is ValueError and "0-dimensional" in gated[1]


@pytest.mark.parametrize(
    "keywords, exception, words",
    [
        ({"granularity": "group"}, ValueError, "apply to an FP8 out_dtype"),
        ({"out_dtype": torch.bfloat16, "granularity": "mx"}, ValueError, "apply to an FP8"),
        ({"out_dtype": torch.int8}, TypeError, "must be the input's dtype or an FP8 type"),
        (
            {"out_dtype": E4M3, "granularity": "token", "group_size": 64},
            ValueError,
            "group_size applies to granularity='group'",
        ),
        ({"out_dtype": E4M3, "scale_rounding": "floor"}, ValueError, "power-of-two scales"),
        ({"out_dtype": E4M3, "blocks": 2}, TypeError, "unexpected keyword argument"),
    ],
)
def test_bad_fp8_keywords_raise_before_anything_runs(keywords, exception, words):
    x = random_input((4, 2 * 128), torch.bfloat16)
    for backend in glu_fused.available_backends():
        if backend in ("cpu", "reference"):
            with glu_fused.use_backend(backend), pytest.raises(exception, match=words):
                glu_fused.swiglu(x, **keywords)


def test_the_out_dtype_of_the_input_is_the_plain_call():
    x = random_input((4, 2 * 128), torch.bfloat16)
    assert torch.equal(glu_fused.swiglu(x, out_dtype=torch.bfloat16), glu_fused.swiglu(x))


# ---- torch.compile and opcheck ----------------------------------------------------------------


def test_compiled_fp8_calls_are_one_node_and_give_the_same_bits():
    from torch._dynamo.testing import CompileCounterWithBackend

    x = random_input((8, 2 * 256), torch.bfloat16)
    gate, value = x[:, :256].contiguous(), x[:, 256:].contiguous()

    def f(x, gate, value):
        a = glu_fused.swiglu(x, out_dtype=E4M3, granularity="group", scale_layout="column")
        b = glu_fused.clamped_swiglu(x, out_dtype=E5M2, granularity="mx")
        c = glu_fused.gated(gate, value, "gelu", out_dtype=E4M3, scale_dtype=E8M0)
        return (*a, *b, *c)

    counter = CompileCounterWithBackend("inductor")
    with torch.no_grad():
        eager = f(x, gate, value)
        compiled = torch.compile(f, backend=counter, fullgraph=True)(x, gate, value)
    assert counter.frame_count == 1
    for i, (a, b) in enumerate(zip(compiled, eager)):
        assert_same_bits(a, b, f"output {i}")


OPCHECK_ARGS = [
    _with(granularity="token", group_size=0, scale_layout="column"),
    _with(group_size=64, scale_dtype=torch.int32, scale_layout="column"),
    _with(granularity="mx", group_size=32, scale_dtype=E8M0, scale_rounding="floor"),
    _with(granularity="tensor", group_size=0, scale=torch.tensor([0.01])),
    _with(out_dtype=E5M2, granularity="tensor", group_size=0, intermediate="float32"),
]


@pytest.mark.parametrize("index", range(len(OPCHECK_ARGS)))
def test_opcheck(index):
    args = OPCHECK_ARGS[index]
    x = random_input((3, 2, 2 * 128), torch.bfloat16)
    torch.library.opcheck(
        torch.ops.glu_fused.glu_forward_fp8, (x, -1, "swiglu", "halves", 1.702, 7.0, *args)
    )
    gate = x[..., :128]
    torch.library.opcheck(torch.ops.glu_fused.gated_forward_fp8, (gate, gate, "silu", *args))


def test_the_readme_example_runs_and_feeds_scaled_mm():
    """README, "FP8 output": its first code block, run as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## FP8 output") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    scope: dict = {}
    exec(code, {"torch": torch, "glu_fused": glu_fused}, scope)  # noqa: S102
    expected = glu_fused.swiglu(scope["x"]).float() @ scope["w"].float()
    err = (scope["out"].float() - expected).abs().max() / expected.abs().max()
    assert err < 0.1, f"the FP8 GEMM's result is {err:.3f} of its scale off"
