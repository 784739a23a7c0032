"""The Triton backend's fused FP8 output (glu_fused/_triton/fp8.py), on its own.

tests/test_fp8.py holds every backend's (q, scale) to the rule applied to its own plain
result over a covering design; this file covers what is particular to the fused Triton
kernels, each check bit for bit against `_fp8.quantize` of the plain Triton result:
  * the fused path runs: no plain kernel launch, no "unfused" warning;
  * the FP8 encoding (integer arithmetic on the float's bits) against torch's conversions
    over every exponent, ties, subnormals, zeros and NaN, for e4m3fn, e5m2 and the fnuz
    types where torch has them;
  * the scale's IEEE division, on amaxes where a multiplication by 1 / FP8_MAX differs;
  * every granularity x scale dtype x rounding x e4m3 / e5m2 on bfloat16 and float32, and
    float16 and float64 too; intermediate="float32";
  * token rows too long for a tile (the row loop), per-tensor scales over many programs
    (the atomic amax), static scales, NaN / infinite / all-zero blocks;
  * strided, expanded, transposed, 3-d, interleaved and gated inputs (contiguous gated
    pairs are one run of several rows).
  * a bias and token counts: the valid rows' q and scales the rule's on the plain call's
    valid rows (a per-tensor amax over them alone), the others' left unwritten.
On a machine without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), whose float32 -> bfloat16 casts truncate: every comparison here is with
the plain Triton kernel's result, which the same cast makes, so none depends on it; the one
check against the CPU backend's bfloat16 result skips there.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import device_of, interpreted, random_input
from covering import each, product

import glu_fused
from glu_fused import _fp8

triton = pytest.importorskip("triton", reason="Triton is not installed")
if glu_fused.backend_status()["triton"] != "available":
    pytest.skip(
        f"backend 'triton': {glu_fused.backend_status()['triton']}", allow_module_level=True
    )
import triton.language as tl  # noqa: E402

from glu_fused._triton import fp8, launch  # noqa: E402

E4M3, E5M2, E8M0 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu
FNUZ = [
    d
    for d in (getattr(torch, "float8_e4m3fnuz", None), getattr(torch, "float8_e5m2fnuz", None))
    if d
]
DEVICE = device_of("triton")
INTERPRETED = interpreted("triton")


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Same dtype, shape, strides and bits; a NaN matches a NaN of either sign."""
    assert (a.dtype, a.shape, a.stride()) == (b.dtype, b.shape, b.stride()), (
        f"{what}: {a.dtype} {tuple(a.shape)} {a.stride()}, expected "
        f"{b.dtype} {tuple(b.shape)} {b.stride()}"
    )
    a, b = a.cpu().contiguous(), b.cpu().contiguous()
    bits = {1: torch.uint8, 4: torch.int32}[a.element_size()]
    same = a.view(bits) == b.view(bits)
    if a.dtype != torch.int32:
        nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
        assert torch.equal(nan_a, nan_b), f"{what}: NaN in other places"
        same |= nan_a
    bad = (~same).nonzero()
    assert bad.numel() == 0, (
        f"{what}: {bad.shape[0]} of {a.numel()} differ, first at {bad[0].tolist()}: "
        f"{a[tuple(bad[0])].float().item()} vs {b[tuple(bad[0])].float().item()}"
    )


def _packed(x, name="swiglu", layout="halves", **options):
    with glu_fused.use_backend("triton"), torch.no_grad():
        return getattr(glu_fused, name)(x, layout=layout, **options)


def _packed_call(name="swiglu", layout="halves"):
    return lambda x, **options: _packed(x, name, layout, **options)


def _gated(gate, value, activation="silu", **options):
    with glu_fused.use_backend("triton"), torch.no_grad():
        return glu_fused.gated(gate, value, activation, **options)


def _wide(t: torch.Tensor, options: dict) -> torch.Tensor:
    """What the plain kernel takes so that its result is y as the rule takes it."""
    half = t.dtype in (torch.float16, torch.bfloat16)
    return t.float() if options.get("intermediate") == "float32" and half else t


def check(call, *inputs, out_dtype=E4M3, **options) -> None:
    """call(*inputs, out_dtype=..., **options) bit for bit against the rule applied to the
    plain call's result (call(*inputs)) on the Triton backend."""
    y = call(*(_wide(t, options) for t in inputs))
    q, s = call(*inputs, out_dtype=out_dtype, **options)
    scale = options.pop("scale", None)
    expected_q, expected_s = _fp8.quantize(
        y, _fp8.resolve(out_dtype, scale=scale, **options), scale
    )
    assert_same_bits(q, expected_q, "q")
    assert_same_bits(s, expected_s, "scale")


def plant(x: torch.Tensor) -> torch.Tensor:
    """x [rows >= 4, 2n] (halves) with an all-zero result row, a NaN, an infinite value with
    a large gate, and a row of zeros but one tiny value (a subnormal FP8 result)."""
    x = x.clone()
    n = x.shape[-1] // 2
    x[0] = 0
    x[1, 5] = float("nan")
    x[2, 0], x[2, n] = 3.0, float("inf")
    x[3] = 0
    x[3, 1], x[3, n + 1] = 1e-3, 1e-3
    return x


# ---- the fused path ---------------------------------------------------------------------


def test_the_fused_path_runs_no_plain_kernel_and_warns_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the plain Triton kernel was launched")

    monkeypatch.setattr(launch, "launch", refuse)
    x = random_input((4, 2 * 128), torch.bfloat16, DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for granularity in ("tensor", "token", "group", "mx"):
            q, _ = _packed(x, out_dtype=E4M3, granularity=granularity)
            assert q.dtype == E4M3
        _gated(x[:, :128], x[:, 128:], out_dtype=E5M2)


# ---- the encoding and the division ------------------------------------------------------------


@triton.jit
def _encode_kernel(y_ptr, q_ptr, count, r, FP8_MAX: tl.constexpr, MANTISSA: tl.constexpr,
                   BIAS: tl.constexpr, FNUZ: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = at < count
    y = tl.load(y_ptr + at, mask=mask, other=0.0)
    scale = tl.load(r + tl.zeros_like(at), mask=mask, other=1.0)
    tl.store(q_ptr + at, fp8._encode(y, scale, FP8_MAX, MANTISSA, BIAS, FNUZ), mask=mask)


def _every_kind_of_float() -> torch.Tensor:
    """float32 values over every exponent FP8 can reach and beyond, ties at every spacing
    (a value's bits with the low 19 to 21 bits cleared, then half a step added), float32
    subnormals, zeros, infinities and NaN, both signs."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 2**31 - 1, (60000,), generator=g, dtype=torch.int64)
    exponent = torch.randint(90, 145, (60000,), generator=g) << 23
    bits = (raw & 0x7FFFFF) | exponent
    ties = torch.cat([(bits >> s << s) | (1 << (s - 1)) for s in (19, 20, 21, 22)])
    special = torch.tensor([0, 1, 0x7FFFFF, 0x7F800000, 0x7FC00000, 0x3F800000], dtype=torch.int64)
    bits = torch.cat([bits, ties, special, torch.arange(0, 0x400000, 0x7FF, dtype=torch.int64)])
    bits = torch.cat([bits, bits | 0x80000000])
    return (bits - (bits >= 2**31) * 2**32).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("out_dtype", [E4M3, E5M2, *FNUZ], ids=str)
def test_the_encoding_is_torchs_conversion_bit_for_bit(out_dtype):
    y = _every_kind_of_float()
    fp8_max = _fp8.FP8_FORMATS[out_dtype][0]
    q = torch.empty(y.shape, dtype=torch.uint8, device=DEVICE)
    r = torch.ones(1, device=DEVICE)
    grid = (triton.cdiv(y.numel(), 4096),)
    _encode_kernel[grid](
        y.to(DEVICE), q, y.numel(), r, fp8_max, **fp8.FORMATS[out_dtype], BLOCK=4096
    )
    expected = y.clamp(-fp8_max, fp8_max).to(out_dtype)
    assert_same_bits(q.view(out_dtype), expected, str(out_dtype))


def test_the_scale_is_an_ieee_division():
    """Amaxes whose m / 448 in float32 is not m * (1 / 448) (nor 1 / s a reciprocal
    approximation's): relu(gate) * 1 makes y the gate itself."""
    m = torch.linspace(1.0, 2.0, 20001, dtype=torch.float32)
    differs = m * (1 / torch.tensor(448.0)) != m / torch.tensor(448.0)
    amaxes = m[differs][:64] * 2.0**7
    assert amaxes.numel() == 64, "this test needs amaxes where the two differ"
    gate = torch.rand(64, 32, generator=torch.Generator().manual_seed(1)) * amaxes[:, None] / 2
    gate[:, 7] = amaxes
    gate = gate.to(DEVICE)
    check(_gated_relu, gate, granularity="token")
    check(_gated_relu, gate, granularity="mx", scale_dtype=E8M0)


def _gated_relu(gate, **options):
    return _gated(gate, torch.ones_like(gate), "relu", **options)


# ---- every mode -------------------------------------------------------------------------

MODES = [
    {"granularity": "tensor"},
    {"granularity": "tensor", "scale_dtype": E8M0},
    {"granularity": "tensor", "scale_dtype": E8M0, "scale_rounding": "floor"},
    {"granularity": "token"},
    {"granularity": "token", "scale_dtype": E8M0, "scale_layout": "column"},
    {"granularity": "token", "scale_dtype": E8M0, "scale_rounding": "floor"},
    {"granularity": "group"},
    {"granularity": "group", "group_size": 64, "scale_layout": "column"},
    {"granularity": "group", "scale_dtype": E8M0, "scale_rounding": "floor"},
    {"granularity": "group", "group_size": 64, "scale_dtype": torch.int32},
    {"granularity": "mx"},
    {"granularity": "mx", "scale_rounding": "floor", "scale_layout": "column"},
    {"granularity": "mx", "scale_dtype": torch.int32, "scale_rounding": "floor"},
]


def test_every_mode_and_fp8_type_on_bfloat16_and_float32():
    def one(dtype, out_dtype, mode, specials):
        x = random_input((6, 2 * 256), dtype, DEVICE)
        check(_packed, plant(x) if specials else x, out_dtype=out_dtype, **MODES[mode])

    params = {
        "dtype": [torch.bfloat16, torch.float32],
        "out_dtype": [E4M3, E5M2],
        "mode": range(len(MODES)),
        "specials": [False, True],
    }
    each(product(params), one)


def test_float16_float64_and_the_float32_intermediate():
    def one(dtype, out_dtype, options):
        x = plant(random_input((5, 2 * 128), dtype, DEVICE))
        check(_packed, x, out_dtype=out_dtype, **options)

    options = [{}, {"granularity": "group"}, {"granularity": "tensor"}, {"intermediate": "float32"}]
    options += [{"granularity": "mx", "intermediate": "float32"}]
    dtypes = [torch.float16, torch.float64, torch.bfloat16]
    each(product({"dtype": dtypes, "out_dtype": [E4M3, E5M2], "options": options}), one)


@pytest.mark.skipif(not FNUZ, reason="this torch has no fnuz types")
def test_fnuz_types():
    x = plant(random_input((4, 2 * 128), torch.bfloat16, DEVICE))
    for out_dtype in FNUZ:
        for options in (
            {},
            {"granularity": "group", "scale_dtype": E8M0},
            {"granularity": "tensor"},
        ):
            check(_packed, x, out_dtype=out_dtype, **options)


# ---- the granularities' own paths ---------------------------------------------------------


def test_long_token_rows_take_the_row_loop():
    for dtype, n in ((torch.bfloat16, 5000), (torch.float64, 2100), (torch.float32, 3 * 4096)):
        config, loop = fp8.tile("token", 0, 3, n, False, dtype.itemsize, 1)
        assert loop, (dtype, n)
        x = plant(random_input((4, 2 * n), dtype, DEVICE))
        x[-1, -1], x[-1, n - 1] = 30.0, 30.0  # the amax at the end of the last chunk
        check(_packed, x)
        check(_packed_call(layout="interleaved"), x, scale_dtype=E8M0)
        check(_packed, x, out_dtype=E5M2, intermediate="float32")


def test_the_tensor_amax_spans_many_programs():
    x = random_input((64, 2 * 1024), torch.bfloat16, DEVICE)
    x[-1, 1023], x[-1, -1] = 40.0, 40.0  # the largest result, in the last program's tile
    config, _ = fp8.tile("tensor", 0, 64, 1024, False, 2, 8)
    assert fp8._grid(config, False, 64, 1024)[0] >= 8, "a grid of several programs"
    check(_packed, x, granularity="tensor")
    check(_packed, x, granularity="tensor", scale_dtype=E8M0, out_dtype=E5M2)
    x[17, 3] = float("nan")  # a NaN in one program wins over every other's amax
    q, s = _packed(x, out_dtype=E4M3, granularity="tensor")
    assert torch.isnan(s).all() and torch.isnan(q.float()).all()
    check(_packed, x, granularity="tensor")


def test_static_scales_are_read_on_the_device_and_returned_as_given():
    x = plant(random_input((6, 2 * 256), torch.bfloat16, DEVICE))
    for value in (0.01, 1e-4, 3.0, float("inf")):
        scale = torch.tensor([value], device=DEVICE)
        check(_packed, x, granularity="tensor", scale=scale)
        _, s = _packed(x, out_dtype=E4M3, scale=scale)
        assert s.data_ptr() != scale.data_ptr() and s.shape == (1,)
    check(_packed, x, out_dtype=E5M2, scale=torch.tensor([[0.02]], device=DEVICE))


def test_nan_infinite_and_all_zero_blocks():
    row = [0.0] * 32 + [float("nan")] + [1.0] * 31 + [float("inf")] + [1.0] * 31
    row += [1e-30] * 32 + [-448.0 * 2**-20] + [2**-30] * 31 + [-0.0] * 96
    gate = torch.tensor([row, [0.0] * len(row), [float("-inf")] + [0.0] * (len(row) - 1)])
    gate = gate.to(DEVICE)
    for options in (
        {"granularity": "mx"},
        {"granularity": "token"},
        {"granularity": "group", "group_size": 64},
        {"granularity": "tensor"},
        {"granularity": "token", "scale_dtype": E8M0, "scale_rounding": "floor"},
    ):
        for out_dtype in (E4M3, E5M2):
            check(_gated_identity, gate, out_dtype=out_dtype, **options)


def _gated_identity(gate, **options):
    """y = gate: relu(1) * gate (gate as the value, so that negatives stay)."""
    return _gated(torch.ones_like(gate), gate, "relu", **options)


# ---- layouts -------------------------------------------------------------------------


def _layouts(dtype):
    def sliced(rows, last):
        return random_input((rows, last + 8), dtype, DEVICE)[:, 3 : 3 + last]

    return {
        "row-strided": sliced(5, 2 * 128),
        "row-strided-192": sliced(4, 2 * 192),
        "transposed": random_input((2 * 128, 5), dtype, DEVICE).t(),
        "expanded": random_input((1, 2 * 128), dtype, DEVICE).expand(4, 2 * 128),
        "3d": random_input((2, 3, 2 * 128), dtype, DEVICE),
        "3d-sliced": random_input((4, 6, 2 * 64), dtype, DEVICE)[:, :3],
    }


def test_strided_and_interleaved_inputs():
    def one(dtype, case, layout, options):
        x = _layouts(dtype)[case]
        check(_packed_call("clamped_swiglu", layout), x, **options)

    params = {
        "dtype": [torch.bfloat16, torch.float32],
        "case": list(_layouts(torch.float32)),
        "layout": ["halves", "interleaved"],
        "options": [{"granularity": "group", "group_size": 64}, {"granularity": "token"}],
    }
    each(product(params), one)
    x = random_input((3, 2 * 128), torch.float32, DEVICE)
    check(_packed_call("glu", "interleaved"), x, granularity="mx")  # the gate second
    check(_packed_call("geglu", "interleaved"), x, granularity="tensor")


def test_gated_inputs():
    def one(dtype, shape, activation, options):
        gate, value = random_input(shape, dtype, DEVICE), random_input(shape, dtype, DEVICE)
        check(_gated_act(activation), gate, value, **options)
        column_major = gate.transpose(-1, -2).contiguous().transpose(-1, -2)
        check(_gated_act(activation), column_major, value, **options)
        check(_gated_act(activation), gate[..., :64], value[..., 64:], **options)

    # Contiguous pairs are one run of all their rows (rows_per_run > 1).
    params = {
        "dtype": [torch.bfloat16, torch.float32],
        "shape": [(5, 128), (3, 2, 128)],
        "activation": ["silu", "gelu", "gelu_tanh", "relu", "sigmoid"],
        "options": [{"granularity": "token"}, {"granularity": "mx"}, {"granularity": "tensor"}],
    }
    each(product(params)[::3], one)
    gate, value = (
        random_input((5, 37), torch.float32, DEVICE),
        random_input((5, 37), torch.float32, DEVICE),
    )
    check(_gated_act("silu"), gate, value)  # rows of 37 in one run of 185
    check(_gated_act("silu"), gate, value, granularity="tensor")


def _gated_act(activation):
    return lambda gate, value, **options: _gated(gate, value, activation, **options)


def test_empty_inputs():
    for shape in ((0, 2 * 128), (3, 0)):
        x = random_input(shape, torch.bfloat16, DEVICE)
        for options in ({}, {"granularity": "group"}, {"granularity": "tensor"}):
            check(_packed, x, **options)
        check(_packed, x, scale=torch.tensor([0.5], device=DEVICE))


# ---- against the CPU backend --------------------------------------------------------------


@pytest.mark.skipif(
    INTERPRETED,
    reason="Triton's interpreter truncates float32 -> bfloat16 casts, so its plain bfloat16 "
    "results are not the CPU backend's",
)
def test_bfloat16_agrees_with_the_cpu_backend_where_the_plain_results_do():
    if not glu_fused.backend_status()["cpu"].startswith("available"):
        pytest.skip("the CPU backend is not built")
    x = random_input((16, 2 * 256), torch.bfloat16)
    with torch.no_grad():
        with glu_fused.use_backend("cpu"):
            y_cpu = glu_fused.reglu(x)
            q_cpu, s_cpu = glu_fused.reglu(x, out_dtype=E4M3, granularity="group")
        y = _packed(x.to(DEVICE), "reglu")
        q, s = _packed(x.to(DEVICE), "reglu", out_dtype=E4M3, granularity="group")
    assert torch.equal(y.cpu(), y_cpu), "ReLU's plain results agree (one product, rounded once)"
    assert_same_bits(q, q_cpu, "q")
    assert_same_bits(s, s_cpu, "scale")


# ---- the bias and token counts -----------------------------------------------------------


def _rows_case(dtype, kind, experts=3, tokens=6, hidden=128):
    """(call, inputs, bias kwargs) of a packed (kind "halves" / "interleaved") or gated call
    on [experts, tokens, ...] inputs with a bias."""
    if kind == "gated":
        inputs = [random_input((experts, tokens, hidden), dtype, DEVICE) for _ in range(2)]
        bias = {
            "gate_bias": random_input((hidden,), dtype, DEVICE, 1.0),
            "value_bias": random_input((hidden,), dtype, DEVICE, 1.0),
        }
        return _gated_act("silu"), inputs, bias
    inputs = [random_input((experts, tokens, 2 * hidden), dtype, DEVICE)]
    bias = {"bias": random_input((2 * hidden,), dtype, DEVICE, 1.0)}
    return _packed_call("clamped_swiglu", kind), inputs, bias


def check_rows(call, inputs, counts, out_dtype=E4M3, **options) -> None:
    """check() with token counts (options: the bias too): the valid rows' q and scales bit
    for bit the rule's on the plain call's valid rows (a per-tensor scale: their amax
    alone); the other rows' q and scales not written (the poison left: NaN)."""
    bias = {k: _wide(v, options) for k, v in options.items() if k in _BIASES}
    y = call(*(_wide(t, options) for t in inputs), valid_tokens=counts, **bias)
    q, s = call(*inputs, valid_tokens=counts, out_dtype=out_dtype, **options)
    options = {k: v for k, v in options.items() if k not in _BIASES}
    valid = _valid(counts, y.shape[1]).to(y.device)
    args = _fp8.resolve(out_dtype, **options)
    expected_q, expected_s = _fp8.quantize(y[valid], args, None)
    assert_same_bits(q[valid], expected_q, "q")
    if options.get("granularity", "token") == "tensor":
        assert_same_bits(s, expected_s, "scale")
    else:
        assert_same_bits(s[valid], expected_s, "scale")
        assert s[~valid].float().isnan().all(), "scales of rows past the counts were written"
    nan_byte = 0x80 if out_dtype in FNUZ else 0x7F
    assert (q[~valid].view(torch.uint8) == nan_byte).all(), "q past the counts was written"


_BIASES = ("bias", "gate_bias", "value_bias")


def _valid(counts: torch.Tensor, tokens: int) -> torch.Tensor:
    """[experts, tokens]: whether each row is below its expert's count."""
    return torch.arange(tokens)[None, :] < counts.cpu()[:, None].long()


def test_bias_and_token_counts():
    """Token, group and tensor scales (and mx, E8M0) on halves, interleaved and gated inputs
    with a bias, counts of none, some and all of each expert's rows; the invalid rows hold
    NaN and the largest values, which neither q nor a per-tensor amax may see."""
    modes = [
        {"granularity": "token"},
        {"granularity": "group", "group_size": 64},
        {"granularity": "tensor"},
        {"granularity": "mx", "scale_dtype": E8M0},
    ]
    for i, (dtype, kind) in enumerate(
        (d, k) for d in (torch.bfloat16, torch.float32) for k in ("halves", "interleaved", "gated")
    ):
        call, inputs, bias = _rows_case(dtype, kind)
        counts = torch.tensor([[0, 2, 6], [6, 0, 2], [2, 6, 0]][i % 3], dtype=torch.int32)
        for t in inputs:  # past the counts: NaN, which q or an amax that read it would keep
            t[~_valid(counts, t.shape[1]).to(DEVICE)] = float("nan")
        counts = counts.to(DEVICE)
        for mode in modes[i % 2 :: 2] + [modes[2]] * (i % 2):
            check_rows(call, inputs, counts, **bias, **mode)
    call, inputs, bias = _rows_case(torch.float32, "halves", 2, 3, 64)
    counts = torch.tensor([3, 1], dtype=torch.int32, device=DEVICE)
    check_rows(call, inputs, counts, out_dtype=E5M2, **bias, granularity="tensor")
    check_rows(call, inputs, counts, **bias, intermediate="float32")


def test_bias_without_counts_and_long_token_rows():
    """A bias alone (every row valid, no count), token rows looped, and counts alone."""
    call, inputs, bias = _rows_case(torch.bfloat16, "halves", 1, 3, 5000)
    counts = torch.tensor([2], dtype=torch.int32, device=DEVICE)
    check_rows(call, inputs, counts, **bias)
    call, inputs, bias = _rows_case(torch.bfloat16, "interleaved", 2, 4)
    check(lambda x, **o: call(x, **bias, **o), *inputs)
    check(lambda x, **o: call(x, **bias, **o), *inputs, granularity="tensor")
    check_rows(call, inputs, torch.tensor([4, 1], dtype=torch.int32, device=DEVICE))
