"""The Triton backend's own pieces: its erfc, its tiling heuristic, its 64-bit path, and
"auto" choosing it where the CUDA kernels are absent. Its numerics against the reference
run in the shared suites (on the CPU through Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches, backend_params, device_of, random_input

import glu_fused
from glu_fused import backends, reference

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


@pytest.mark.parametrize(
    ("runs", "run_len", "tile"),
    [(1, 7, (1, 8)), (8192, 4096, (1, 4096)), (3, 100_000, (1, 4096)), (1000, 16, (256, 16))],
)
def test_tile_heuristic(backend, runs, run_len, tile):
    config = launch.config(runs, run_len)
    assert (config["BLOCK_R"], config["BLOCK_E"]) == tile
    programs = -(-runs // tile[0]) * -(-run_len // tile[1])
    assert config["grid"] == (programs,)
    assert 1 <= config["num_warps"] <= 8 and not config["WIDE"]
    assert launch.config(1, 2**31 - 1)["WIDE"]
    assert launch.config(1, 2**30, pairs=True)["WIDE"]


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_64_bit_offsets_inside_runs(backend, layout, monkeypatch):
    """The WIDE variant (offsets inside a run in 64 bits, for runs past 2^31 elements) gives
    the same result; here forced on small tensors."""
    plain_config = launch.config
    monkeypatch.setattr(launch, "config", lambda *args: {**plain_config(*args), "WIDE": True})
    x = random_input((3, 2 * 300), torch.float32, device_of(backend)).requires_grad_()
    with glu_fused.use_backend(backend):
        out = glu_fused.geglu(x, layout=layout)
        (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    x64 = x.detach().double().requires_grad_()
    want = reference.geglu(x64, layout=layout)
    (want_dx,) = torch.autograd.grad(want, x64, torch.ones_like(want))
    assert_matches(out, want, torch.float32, "forward")
    assert_matches(dx, want_dx, torch.float32, "backward")


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
