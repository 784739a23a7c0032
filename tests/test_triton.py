"""The Triton backend's own pieces: its erfc and GeLU CDF, its tiling heuristic, the
alignment it promises the compiler, its 64-bit path, and "auto" choosing it where the CUDA
kernels are absent. Its numerics against the reference run in the shared suites (on the
CPU through Triton's interpreter); what the compiler makes of its kernels,
tests/test_triton_codegen.py."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches, backend_params, device_of, random_input

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
