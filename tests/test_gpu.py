"""What only a GPU can show of the GPU backends ("cuda", "triton"): streams, devices,
tensors past 2^31 elements. Their numerics run in the shared suites (test_numerics,
test_extremes, ...), which take every backend. Without a GPU, those suites run the Triton
kernels in Triton's interpreter, and `make test` runs them a second time with
$GLU_FUSED_EMULATE_CUDA, over the CUDA kernels' thread code on the host."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import assert_matches, backend_params, random_input

import glu_fused
from glu_fused import _C, reference

# Each GPU backend, skipped without a GPU (the interpreter's Triton runs CPU tensors).
needs_gpu = pytest.mark.parametrize(
    "backend",
    [
        pytest.param(
            p.values[0],
            marks=[
                *p.marks,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
            ],
            id=p.id,
        )
        for p in backend_params(("cuda", "triton"))
    ],
)


def _free_gpu_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


def test_emulation_runs_when_asked():
    """The emulated run of the suites would be a second run of the CPU kernels otherwise."""
    asked = os.environ.get("GLU_FUSED_EMULATE_CUDA", "0") != "0"
    if not asked:
        pytest.skip("$GLU_FUSED_EMULATE_CUDA is not set")
    assert _C.WITH_CUDA, "emulation asked for, but the extension has no CUDA kernels"
    assert _C.EMULATE_CUDA == 1


@needs_gpu
def test_runs_on_the_current_stream(backend):
    """The kernel is queued behind work on the caller's stream: on any other stream it would
    read the input before the slow copy into it has finished."""
    src = random_input((256, 2 * 1024), torch.float32, "cuda")
    x = torch.full_like(src, float("nan"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with glu_fused.use_backend(backend), torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 0.1 s of spinning before the copy
        x.copy_(src)
        out = glu_fused.swiglu(x)
    side.synchronize()
    assert_matches(out, reference.swiglu(src.double()), torch.float32, "side stream")


@needs_gpu
def test_runs_on_the_tensors_device(backend):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs: a tensor on one while the other is current")
    x = random_input((64, 2 * 96), torch.float32, "cuda:1")
    with glu_fused.use_backend(backend), torch.cuda.device(0):
        out = glu_fused.geglu(x)
    assert out.device == x.device
    assert_matches(out, reference.geglu(x.double()), torch.float32, "cuda:1")


@needs_gpu
@pytest.mark.parametrize(
    ("shape", "dim"),
    [
        ((2**20 + 1, 2 * 1025), -1),  # 64-bit row offsets
        ((2, 2**30 + 9), 0),  # one run longer than 2^30, its value half past 2^30
    ],
    ids=["many-rows", "dim-0"],
)
def test_tensors_beyond_2_to_the_31_elements(backend, shape, dim):
    """Both directions on a bfloat16 tensor of over 2^31 elements, checked at its two ends."""
    numel = shape[0] * shape[1]
    assert numel > 2**31
    if _free_gpu_bytes() < 8 * numel:  # x, dx: 2 bytes an element; out, grad: 1; headroom
        pytest.skip("not enough free GPU memory")
    # Drawn in bfloat16: random_input's float64 draw would need 8 bytes an element.
    x = torch.randn(shape, dtype=torch.bfloat16, device="cuda").mul_(3).requires_grad_()
    with glu_fused.use_backend(backend):
        out = glu_fused.swiglu(x, dim)
        grad = torch.randn_like(out)
        (dx,) = torch.autograd.grad(out, x, grad)
    for part in (slice(0, 3), slice(-3, None)):
        if dim == 0:
            xs, outs, grads, dxs = x[:, part], out[:, part], grad[:, part], dx[:, part]
        else:
            xs, outs, grads, dxs = x[part], out[part], grad[part], dx[part]
        x64 = xs.detach().double().requires_grad_()
        want = reference.swiglu(x64, dim)
        (want_dx,) = torch.autograd.grad(want, x64, grads.double())
        assert_matches(outs, want, torch.bfloat16, f"forward {part}")
        assert_matches(dxs, want_dx, torch.bfloat16, f"backward {part}")
