"""The Triton backend's own pieces: its erfc and GeLU CDF, its tiling heuristic, the
alignment it promises the compiler, its 64-bit path, "auto" choosing it where the CUDA
kernels are absent, and the bias and token-count modes (HAS_BIAS, MASKED and the bias
gradient's per-tile partial sums, backward_bias_kernel). Its numerics against the
reference run in the shared suites (on the CPU through Triton's interpreter); what the
compiler makes of its kernels, tests/test_triton_codegen.py."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, assert_matches, backend_params, device_of, random_input

import glu_fused
from glu_fused import _table, backends, reference

triton = pytest.importorskip("triton", reason="Triton is not installed")
import triton.language as tl  # noqa: E402

from glu_fused._triton import launch  # noqa: E402
from glu_fused._triton import math as m  # noqa: E402

TRITON = backend_params(("triton",))
pytestmark = pytest.mark.parametrize("backend", TRITON)


@triton.jit
def _erfc_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, m.erfc(tl.load(x_ptr + offsets, mask=mask)), mask=mask)


# (dtype, largest relative error): float32's fit is good to 1.2e-7, and its float32
# evaluation adds a few ulps (4.4e-7 measured in the interpreter); float64, Cody's
# approximations, 6.6e-16 measured.
ERFC_BOUNDS = [(torch.float32, 1e-6), (torch.float64, 2e-15)]


@pytest.mark.parametrize(("dtype", "bound"), ERFC_BOUNDS, ids=str)
def test_erfc_relative_error(backend, dtype, bound):
    dev = device_of(backend)
    finite_end = 9.0 if dtype == torch.float32 else 26.0  # erfc stays a normal number
    x = torch.cat(
        [
            torch.linspace(-6, finite_end, 4001, dtype=torch.float64),
            torch.tensor([0.0, -0.0, 0.46875, 4.0, -4.0, 0.5, 1e-30]),
            torch.rand(2000, dtype=torch.float64) * (finite_end + 6) - 6,
        ]
    ).to(dtype)
    out = torch.full_like(x, float("nan"), device=dev)
    _erfc_kernel[((x.numel() + 1023) // 1024,)](x.to(dev), out, x.numel(), BLOCK=1024)
    want = torch.special.erfc(x.double())
    rel = ((out.double().cpu() - want) / want).abs()
    worst = rel.argmax()
    assert rel.max() <= bound, f"erfc({x[worst].item()}): relative error {rel.max().item():.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_erfc_at_its_limits(backend, dtype):
    dev = device_of(backend)
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 40.0, -40.0, 1e30], dtype=dtype)
    out = torch.full_like(x, 7.0, device=dev)
    _erfc_kernel[(1,)](x.to(dev), out, x.numel(), BLOCK=8)
    assert out.cpu().tolist()[:2] == [0.0, 2.0]
    assert out[2].isnan()
    assert out.cpu().tolist()[3:] == [0.0, 2.0, 0.0]


@triton.jit
def _cdf_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, m.gelu_cdf(tl.load(x_ptr + offsets, mask=mask)), mask=mask)


def _phi(x: torch.Tensor) -> torch.Tensor:
    """Phi in float64, correctly rounded for float64 inputs (mpmath): torch's erfc(-x/sqrt 2)
    loses 2 (x^2 / 2) ulps to the rounding of x / sqrt 2, 1.6e-13 near x = -37."""
    if x.dtype != torch.float64:
        return 0.5 * torch.special.erfc(-x.double() / 2**0.5)
    mpmath = pytest.importorskip("mpmath", reason="mpmath is not installed")
    with mpmath.workdps(40):
        return torch.tensor([float(mpmath.ncdf(v)) for v in x.tolist()], dtype=torch.float64)


# GeLU's CDF, Phi(g) = erfc(-g / sqrt 2) / 2, from where it rounds to 0 to where it rounds
# to 1: relative error where Phi is a normal number (measured in the interpreter: 4.7e-7 in
# float32, 7.3e-16 in float64, with the exponent split from g itself; 1.2e-5 in float32 with
# it split from g / sqrt 2); below, a few of the smallest subnormals (the last product's and
# the halving's roundings: 1.9 measured in float32). On a GPU, libdevice's exp is its
# flush-to-zero variant (ex2.approx.ftz): there, Phi below 1.2e-38 may read 0 in float32.
CDF_RANGES = [(torch.float32, -14.5, 9.0, 1e-6), (torch.float64, -38.7, 9.0, 2e-15)]
SUBNORMAL_ULPS = 4


@pytest.mark.parametrize(("dtype", "low", "high", "bound"), CDF_RANGES, ids=str)
def test_gelu_cdf_relative_error(backend, dtype, low, high, bound):
    dev = device_of(backend)
    x = torch.cat(
        [
            torch.linspace(low, high, 2001, dtype=torch.float64),
            torch.tensor([0.0, -0.0, -0.5, 0.5, -(2**0.5) * 4, -(2**0.5) * 0.46875, 1e-30, -1e-30]),
            torch.rand(1000, dtype=torch.float64) * (high - low) + low,
        ]
    ).to(dtype)
    out = torch.full_like(x, float("nan"), device=dev)
    _cdf_kernel[((x.numel() + 1023) // 1024,)](x.to(dev), out, x.numel(), BLOCK=1024)
    got, want = out.double().cpu(), _phi(x)
    normal = want >= torch.finfo(dtype).tiny
    rel = ((got - want) / want).abs()[normal]
    worst = x[normal][rel.argmax()].item()
    assert rel.max() <= bound, f"Phi({worst}): relative error {rel.max().item():.2e}"
    smallest = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    ulps = (got - want).abs()[~normal] / smallest
    assert ulps.max() <= SUBNORMAL_ULPS, f"{ulps.max().item()} subnormal ulps"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gelu_cdf_at_its_limits(backend, dtype):
    dev = device_of(backend)
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 40.0, -40.0, 1e30])
    out = torch.full_like(x.to(dtype), 7.0, device=dev)
    _cdf_kernel[(1,)](x.to(dtype).to(dev), out, x.numel(), BLOCK=8)
    got = out.cpu().tolist()
    assert got[:2] == [1.0, 0.0] and out[2].isnan()
    assert got[3:] == [0.5, 0.5, 1.0, 0.0, 1.0]


ITEMSIZES = [2, 4, 8]


@pytest.mark.parametrize("align", [None, 1], ids=["vectors", "elements"])
@pytest.mark.parametrize("itemsize", ITEMSIZES)
def test_tile_heuristic(backend, itemsize, align):
    """choose() returns one of configs(itemsize, align): the widest tile among those within
    1/8 of the fewest tiles, covering every output; the WIDE tile exactly where 32-bit
    offsets inside a run could overflow."""
    narrow = [c for c in launch.configs(itemsize, align) if not c.wide]
    for runs in (1, 3, 64, 1000, 8192):
        for run_len in (1, 7, 16, 100, 2880, 4096, 4100, 11008, 14336, 100_000):
            chosen = launch.choose(runs, run_len, itemsize=itemsize, align=align)
            tiles = {c: -(-runs // c.block_r) * -(-run_len // c.block_e) for c in narrow}
            fewest = min(tiles.values())
            assert chosen in narrow and 8 * tiles[chosen] <= 9 * fewest
            assert all(c.block_e <= chosen.block_e for c in narrow if 8 * tiles[c] <= 9 * fewest)
            assert chosen.block_r * chosen.block_e == launch.tile_outputs(itemsize)
            if align is None:
                config = launch.config(runs, run_len, itemsize=itemsize)
                assert config["grid"] == (tiles[chosen],)
    wide = launch.configs(itemsize, align)[-1]
    for run_len, pairs in ((2**31 - 1, False), (2**30, True)):
        assert launch.choose(1, run_len, pairs, itemsize, align) == wide
    assert not launch.choose(1, 2**31 - 2 * launch.tile_outputs(itemsize), itemsize=itemsize).wide


@pytest.mark.parametrize(
    ("runs", "run_len", "itemsize", "align", "tile"),
    [
        (8192, 4096, 4, 4, (1, 4096)),
        (8192, 4096, 8, 2, (1, 2048)),
        (64, 4100, 2, 4, (8, 512)),
        (1000, 16, 4, 4, (256, 16)),
        (1000, 15, 4, 1, (16, 256)),
    ],
)
def test_tile_examples(backend, runs, run_len, itemsize, align, tile):
    """Long rows take one run per tile; a row of 4100 takes 9 tiles of 512 per 8 rows, not 2
    mostly empty tiles of 4096 per row; short rows stack 256 to a tile, or 16 where each
    access is one element."""
    chosen = launch.choose(runs, run_len, itemsize=itemsize, align=align)
    assert (chosen.block_r, chosen.block_e) == tile


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_64_bit_offsets_inside_runs(backend, layout, monkeypatch):
    """The WIDE variant (offsets inside a run in 64 bits, for runs past 2^31 elements) gives
    the same result; here forced on small tensors."""
    monkeypatch.setattr(launch, "choose", lambda *args: launch.configs(4, 4)[-1])
    x = random_input((3, 2 * 300), torch.float32, device_of(backend)).requires_grad_()
    with glu_fused.use_backend(backend):
        out = glu_fused.geglu(x, layout=layout)
        (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    x64 = x.detach().double().requires_grad_()
    want = reference.geglu(x64, layout=layout)
    (want_dx,) = torch.autograd.grad(want, x64, torch.ones_like(want))
    assert_matches(out, want, torch.float32, "forward")
    assert_matches(dx, want_dx, torch.float32, "backward")


@pytest.fixture
def launches(monkeypatch):
    """Every launch's (itemsize, tile, constexprs, runs_per_outer), as the launcher
    specializes it."""
    seen = []
    plain = launch.specialization

    def spy(plan, like):
        result = plain(plan, like)
        seen.append((like.element_size(), *result[:2], plan["runs_per_outer"]))
        return result

    monkeypatch.setattr(launch, "specialization", spy)
    return seen


def _call(backend, x, dim=-1, fn="swiglu", **kwargs):
    """fn's forward and backward on x (kwargs: fn's own, such as its layout)."""
    x = x.detach().requires_grad_()
    with glu_fused.use_backend(backend):
        out = getattr(glu_fused, fn)(x, dim, **kwargs)
        torch.autograd.grad(out, x, torch.ones_like(out))


def _padded(rows, cols, dtype, dev, offset=0, pad=0):
    """A [rows, cols] view into a buffer with `pad` more columns, `offset` elements in."""
    return random_input((rows, cols + pad), dtype, dev)[:, offset : offset + cols]


# (dtype, hidden, offset, pad, ALIGN): the largest power of two, up to 16 bytes of elements,
# dividing every pointer (in elements) and stride of both the forward and backward launch.
ALIGN_CASES = [
    (torch.float32, 64, 0, 0, 4),
    (torch.float32, 4100, 0, 0, 4),  # rows of 4100: not a multiple of 16 elements
    (torch.bfloat16, 4100, 0, 0, 4),  # ... of 16 bytes: 8-byte vectors
    (torch.float32, 66, 0, 0, 2),
    (torch.float32, 4097, 0, 0, 1),
    (torch.float32, 64, 1, 1, 1),  # every row one element off
    (torch.bfloat16, 64, 2, 2, 2),
    (torch.float16, 64, 0, 0, 8),
    (torch.float64, 64, 0, 0, 2),
]


@pytest.mark.parametrize(("dtype", "hidden", "offset", "pad", "align"), ALIGN_CASES, ids=str)
def test_alignment_promised_to_the_compiler(backend, launches, dtype, hidden, offset, pad, align):
    x = _padded(4, 2 * hidden, dtype, device_of(backend), offset, pad)
    _call(backend, x)
    assert [constexprs["ALIGN"] for _, _, constexprs, _ in launches] == [align, align]


def test_a_false_alignment_is_refused(backend, monkeypatch):
    """ALIGN is checked against the call's pointers and strides before every launch: a wrong
    hint would make misaligned vector accesses on a GPU, silently in the interpreter."""
    monkeypatch.setattr(launch, "alignment", lambda pointers, integers, itemsize: 16 // itemsize)
    x = _padded(4, 2 * 64, torch.float32, device_of(backend), offset=1, pad=1)
    with pytest.raises(RuntimeError, match="ALIGN=4 does not hold"):
        _call(backend, x)


def test_a_tile_across_outer_blocks_is_refused(backend, monkeypatch):
    """NESTED tiles hold at most runs_per_outer runs (the kernels' one-division split of runs
    into outer blocks counts on it); a wider tile is refused before the launch."""
    monkeypatch.setattr(launch, "choose", lambda *args: launch.configs(4)[0])
    x = random_input((3, 2 * 6, 5), torch.float32, device_of(backend))
    with pytest.raises(RuntimeError, match="BLOCK_R=256 > runs_per_outer"):
        _call(backend, x, dim=1)


def test_launches_stay_in_the_compiled_set(backend, launches):
    """Every launch is one of the specializations test_triton_codegen.py compiles: a tile of
    configs(), an ALIGN of alignments(), a (PAIRS, GATE_FIRST) of PAIR_LAYOUTS; NESTED
    tiles no wider than an outer block."""
    dev = device_of(backend)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for fn, layout in (("glu", "interleaved"), ("swiglu", "halves"), ("clamped_swiglu", None)):
            kwargs = {} if layout is None else {"layout": layout}
            _call(backend, random_input((5, 2 * 40), dtype, dev), fn=fn, **kwargs)
            _call(backend, random_input((3, 2 * 6, 5), dtype, dev), dim=1, fn=fn, **kwargs)
            _call(backend, _padded(3, 2 * 33, dtype, dev, 1, 3), fn=fn, **kwargs)
        gate = random_input((7, 9), dtype, dev)
        with glu_fused.use_backend(backend):
            glu_fused.gated(gate, gate.flip(0), "gelu")
    codes = {a.code for a in _table.ACTIVATIONS.values()}
    assert len(launches) > 40
    seen = {"NESTED": set(), "layouts": set()}
    for itemsize, tile, constexprs, runs_per_outer in launches:
        assert tile in launch.configs(itemsize, constexprs["ALIGN"])
        assert not constexprs["NESTED"] or tile.block_r <= runs_per_outer
        assert constexprs["ALIGN"] in launch.alignments(itemsize)
        assert constexprs["ACT"] in codes
        assert (constexprs["COMPUTE"] == tl.float64) == (itemsize == 8)
        seen["layouts"].add((constexprs["PAIRS"], constexprs["GATE_FIRST"]))
        seen["NESTED"].add(constexprs["NESTED"])
    assert seen == {"NESTED": {False, True}, "layouts": set(launch.PAIR_LAYOUTS)}


def test_auto_picks_triton_for_cuda_tensors_without_cuda_kernels(backend, monkeypatch):
    cuda = backends.BACKENDS["cuda"]
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: "built without CUDA kernels")
    try:
        with glu_fused.use_backend("auto"):  # routes chosen anew, with cuda unavailable
            assert backends.select(torch.device("cuda")).name == "triton"
            if torch.cuda.is_available():  # and the call runs there
                x = random_input((4, 2 * 64), torch.float32, "cuda")
                assert_matches(glu_fused.swiglu(x), reference.swiglu(x.double()), torch.float32)
    finally:
        monkeypatch.undo()
        with glu_fused.use_backend("auto"):  # and again as they were
            pass


# ---- the bias and token counts (csrc/glu_kernels.h, RowOptions) ------------------------------


def _counts(experts: int, tokens: int, case: int) -> torch.Tensor:
    """Token counts of `experts` groups of `tokens` rows: none, some and all, rotated by
    `case`, so that every count meets every layout across a test's cases."""
    counts = [0, tokens // 3 + 1, tokens][case % 3 :] + [0, tokens // 3 + 1, tokens][: case % 3]
    return torch.tensor((counts * experts)[:experts], dtype=torch.int32)


def _valid_rows(counts: torch.Tensor, tokens: int) -> torch.Tensor:
    """[experts, tokens]: whether each row is below its expert's count."""
    return torch.arange(tokens)[None, :] < counts[:, None].long()


def _sum_bound(got, want, terms, dtype, what):
    """A bias gradient: a sum over rows, held to |got - want| <= atol + rtol * sum |terms|
    with the dtype's (rtol, atol): its rounding, and that of the rows' gradients summed in
    the compute type."""
    rtol, atol = TOLERANCES[dtype]
    err = (got.double().cpu() - want.double().cpu()).abs()
    bound = atol + rtol * terms.double().cpu()
    assert bool((err <= bound).all()), f"{what}: |err| {(err - bound).max().item():.3e} over"


def _row_call(backend, kind, fn, inputs, biases, counts):
    """(out) of a packed `fn` (kind "halves" / "interleaved") or a gated one on inputs [x]
    or [gate, value] with biases [bias] or [gate_bias, value_bias] and token counts."""
    with glu_fused.use_backend(backend):
        if kind == "gated":
            gate_bias, value_bias = biases if biases else (None, None)
            return glu_fused.gated(
                *inputs, fn, gate_bias=gate_bias, value_bias=value_bias, valid_tokens=counts
            )
        bias = biases[0] if biases else None
        return getattr(glu_fused, fn)(inputs[0], layout=kind, bias=bias, valid_tokens=counts)


def _row_reference(kind, fn, inputs, biases, counts):
    if kind == "gated":
        gate_bias, value_bias = biases if biases else (None, None)
        return reference.gated(
            *inputs, fn, gate_bias=gate_bias, value_bias=value_bias, valid_tokens=counts
        )
    bias = biases[0] if biases else None
    return getattr(reference, fn)(inputs[0], layout=kind, bias=bias, valid_tokens=counts)


def _check_rows(backend, kind, fn, dtype, experts, tokens, hidden, counts, bias=True, gaps=0):
    """Forward and backward (input and bias gradients) of one call with a bias and token
    counts against the float64 reference: the valid rows within the dtype's bound; the
    others' outputs not written (NaN, as the plan poisons them), their input gradients
    zeros; the invalid rows of the inputs and the upstream gradient hold NaN, which a
    kernel that read them would spread. gaps: gated inputs are views of [experts, tokens +
    gaps, hidden]."""
    dev = device_of(backend)
    if kind == "gated":
        inputs = [
            random_input((experts, tokens + gaps, hidden), dtype, dev)[:, :tokens] for _ in range(2)
        ]
        biases = [random_input((hidden,), dtype, dev, 1.0) for _ in range(2)] if bias else []
    else:
        inputs = [random_input((experts, tokens, 2 * hidden), dtype, dev)]
        biases = [random_input((2 * hidden,), dtype, dev, 1.0)] if bias else []
    if counts is None:
        valid = torch.ones(experts, tokens, dtype=torch.bool)
    else:
        valid = _valid_rows(counts, tokens)
        counts = counts.to(dev)
    inputs64 = [t.detach().double().cpu().requires_grad_() for t in inputs]
    biases64 = [b.detach().double().cpu().requires_grad_() for b in biases]
    for t in inputs:
        t[~valid.to(dev)] = float("nan")  # not to be read
    inputs = [t.requires_grad_() for t in inputs]
    biases = [b.requires_grad_() for b in biases]
    out = _row_call(backend, kind, fn, inputs, biases, counts)
    want = _row_reference(kind, fn, inputs64, biases64, None if counts is None else counts.cpu())
    what = f"{kind} {fn} {dtype} counts {None if counts is None else counts.tolist()}"
    assert_matches(out[valid.to(dev)], want[valid], dtype, f"{what}: forward")
    assert out[~valid.to(dev)].isnan().all(), f"{what}: rows past the counts were written"
    dy = random_input(out.shape, dtype, dev)
    dy[~valid.to(dev)] = float("nan")  # not to be read
    grads = torch.autograd.grad(out, inputs + biases, dy)
    dy64 = torch.where(valid[..., None], dy.double().cpu(), 0.0)
    want_grads = torch.autograd.grad(want, inputs64 + biases64, dy64)
    for i, (got, exp) in enumerate(zip(grads[: len(inputs)], want_grads[: len(inputs)])):
        assert_matches(got[valid.to(dev)], exp[valid], dtype, f"{what}: input gradient {i}")
        assert (got[~valid.to(dev)] == 0).all(), f"{what}: rows past the counts not zeros"
    for i, (got, exp) in enumerate(zip(grads[len(inputs) :], want_grads[len(inputs) :])):
        terms = want_grads[i if kind == "gated" else 0].abs().sum((0, 1))
        assert got.dtype == dtype and got.shape == exp.shape
        _sum_bound(got, exp, terms, dtype, f"{what}: bias gradient {i}")


ROW_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def test_bias_and_token_counts(backend):
    """Every dtype, halves, interleaved pairs (glu's gate second) and gated inputs, with a
    bias and counts of none, some and all of each expert's tokens: 3 x 45 rows, bias tiles
    of 64 rows the last one partial; without a bias; without counts."""
    cases = [
        ("halves", "swiglu"),
        ("interleaved", "glu"),
        ("gated", "gelu"),
        ("interleaved", "clamped_swiglu"),
    ]
    for i, dtype in enumerate(ROW_DTYPES):
        for j, (kind, fn) in enumerate(cases):
            counts = _counts(3, 45, i + j)
            _check_rows(backend, kind, fn, dtype, 3, 45, 24, counts)
    _check_rows(backend, "halves", "geglu", torch.float32, 2, 40, 16, _counts(2, 40, 1), False)
    _check_rows(backend, "gated", "silu", torch.bfloat16, 3, 30, 16, None)
    _check_rows(backend, "halves", "reglu", torch.float32, 2, 33, 16, None)


def test_bias_gradient_tiles_of_long_rows_and_strided_inputs(backend, launches):
    """Rows of 600 take tiles of fewer than 64 rows, so that a program of backward_bias walks
    its 64 rows in steps; gated views with gaps between experts."""
    _check_rows(backend, "halves", "swiglu", torch.float32, 2, 50, 600, _counts(2, 50, 1))
    bias_tiles = [t for _, t, c, _ in launches if c["HAS_BIAS"] and t.block_r < 64]
    assert bias_tiles, "no tile of fewer rows than a bias tile"
    _check_rows(backend, "gated", "silu", torch.float32, 3, 20, 16, _counts(3, 20, 2), gaps=3)


def test_bias_partials_are_per_tile_sums(backend, monkeypatch):
    """The partials themselves, for a backward of 150 rows (3 tiles, the last of 22): each
    the sum of its tile's valid rows' float32 gradients, and 0 for a tile of no valid row
    (the second expert's rows 50-99 have no valid row; tile 1, rows 64-127, has rows
    64-99 invalid and 100-127 valid)."""
    captured = []
    plain = launch.launch

    def spy(kernel, plan, like):
        if plan.get("bias_grad_partials") is not None:
            captured.append(plan["bias_grad_partials"])
        plain(kernel, plan, like)

    monkeypatch.setattr(launch, "launch", spy)
    dev = device_of(backend)
    for counts in ([50, 0, 50], [50, 0, 0]):
        x = random_input((3, 50, 2 * 16), torch.float32, dev).requires_grad_()
        bias = random_input((2 * 16,), torch.float32, dev, 1.0).requires_grad_()
        counts = torch.tensor(counts, dtype=torch.int32, device=dev)
        with glu_fused.use_backend(backend):
            out = glu_fused.swiglu(x, bias=bias, valid_tokens=counts)
            dy = torch.where(out.isnan(), 0.0, 1.0)
            (dx, _) = torch.autograd.grad(out, (x, bias), dy)
        partials = captured.pop().cpu()
        assert partials.shape == (3, 2, 16) and not partials.isnan().any()
        rows = dx.detach().cpu().reshape(150, 2, 16)  # the rows' rounded gradients
        for t in range(3):
            tile = rows[64 * t : 64 * (t + 1)]
            torch.testing.assert_close(partials[t], tile.sum(0), rtol=1e-5, atol=1e-5)
        if counts[2] == 0:
            assert (partials[2] == 0).all()


def test_row_launches_stay_in_the_compiled_set(backend, monkeypatch):
    """Launches with a bias or counts are among test_triton_codegen.py's: every (HAS_BIAS,
    MASKED), each tile of kernel_configs() (backward_bias's of at most 64 rows)."""
    seen = []
    plain = launch.specialization

    def spy(plan, like):
        result = plain(plan, like)
        partials = plan.get("bias_grad_partials") is not None
        seen.append((like.element_size(), partials, *result[:2]))
        return result

    monkeypatch.setattr(launch, "specialization", spy)
    dev = device_of(backend)
    for dtype in (torch.bfloat16, torch.float64):
        x = random_input((2, 5, 2 * 40), dtype, dev).requires_grad_()
        bias = random_input((2 * 40,), dtype, dev, 1.0)
        trained = bias.clone().requires_grad_()  # its gradient: the partials
        counts = torch.tensor([5, 2], dtype=torch.int32, device=dev)
        for b, c in ((bias, None), (None, counts), (trained, counts)):
            _call(backend, x, bias=b, valid_tokens=c)
    modes = set()
    for itemsize, partials, tile, constexprs in seen:
        kernel = "backward_bias" if partials else "backward"
        assert tile in launch.kernel_configs(kernel, itemsize, constexprs["ALIGN"])
        assert constexprs["HAS_BIAS"] or not partials
        modes.add((constexprs["HAS_BIAS"], constexprs["MASKED"], partials))
    assert modes == {(True, False, False), (False, True, False), (True, True, False)} | {
        (True, True, True)
    }


def test_bias_and_counts_agree_with_the_cpu_backend_bit_for_bit(backend):
    """ReGLU in float32 (one sum a side, one product, no rounding in between): the forward
    and the input gradients with a bias and counts are the CPU backend's bit for bit, rows
    past the counts included (unwritten, NaN, in both; zero gradients)."""
    if not glu_fused.backend_status()["cpu"].startswith("available"):
        pytest.skip("the CPU backend is not built")
    dev = device_of(backend)
    x = random_input((3, 7, 2 * 40), torch.float32)
    bias = random_input((2 * 40,), torch.float32, scale=1.0)
    counts = torch.tensor([7, 0, 3], dtype=torch.int32)
    dy = random_input((3, 7, 40), torch.float32)
    results = []
    for name, device in (("cpu", "cpu"), (backend, dev)):
        xs = x.to(device).requires_grad_()
        with glu_fused.use_backend(name):
            out = glu_fused.reglu(xs, bias=bias.to(device), valid_tokens=counts.to(device))
            (dx,) = torch.autograd.grad(out, xs, dy.to(device))
        results.append((out.detach().cpu(), dx.cpu()))
    for got, want, what in zip(results[1], results[0], ("forward", "input gradient")):
        assert torch.equal(got.isnan(), want.isnan()), what
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), what
