"""Calls every kernel variant of a backend once, on small tensors, for compute-sanitizer
(memcheck, racecheck) to watch: each function and gated activation, dtype, direction
(forward, backward), layout (halves, interleaved) and memory shape (aligned rows, rows that
are not 16-byte aligned, a sliced input, a split along a middle dim, a run longer than a
block's part with a ragged tail); and FP8 output in every granularity the shape allows, split
along the last dim. Each result is also checked, against the float64 reference (FP8: bit for
bit against the rule applied to the plain result), so the driver fails on a wrong answer as
well as on a bad access.

    compute-sanitizer --tool memcheck python bench/sanitize_driver.py --backend cuda
    python bench/sanitize_driver.py --device cpu --backend cpu     # the same calls, no GPU
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import glu_fused
from glu_fused import _fp8, _table, reference
from glu_fused.testing import assert_matches

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# name -> (make an input on a device in a dtype, the dim to split)
SHAPES: dict[str, tuple[Callable[[str, torch.dtype], torch.Tensor], int]] = {
    "aligned rows": (lambda d, t: _randn((3, 2 * 64), d, t), -1),
    "misaligned rows": (lambda d, t: _randn((3, 2 * 63), d, t), -1),
    "sliced input": (lambda d, t: _randn((4, 2 * 40 + 2), d, t)[:, 1:-1], -1),
    "middle dim": (lambda d, t: _randn((2, 2 * 4, 16), d, t), 1),
    "long ragged run": (lambda d, t: _randn((2, 2 * 4104 + 2 * 3), d, t), -1),
}


def _randn(shape, device, dtype) -> torch.Tensor:
    return (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).to(device)


def _check_packed(f: _table.PackedFunction, x: torch.Tensor, dim: int, layout: str) -> None:
    x = x.requires_grad_()
    out = getattr(glu_fused, f.public)(x, dim, layout=layout, **dict(f.options))
    grad_out = _randn(out.shape, x.device, x.dtype)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    x64 = x.detach().double().cpu().requires_grad_()
    want = getattr(reference, f.public)(x64, dim, layout=layout, **dict(f.options))
    (want_grad,) = torch.autograd.grad(want, x64, grad_out.double().cpu())
    assert_matches(out, want, x.dtype, f"{f.name} forward")
    assert_matches(grad, want_grad, x.dtype, f"{f.name} backward")


def _check_gated(activation: str, device: str, dtype: torch.dtype) -> None:
    gate, value = (_randn((5, 37), device, dtype).requires_grad_() for _ in range(2))
    out = glu_fused.gated(gate, value, activation)
    grad_out = _randn(out.shape, device, dtype)
    grads = torch.autograd.grad(out, (gate, value), grad_out)
    g64, v64 = (t.detach().double().cpu().requires_grad_() for t in (gate, value))
    want = reference.gated(g64, v64, activation)
    wants = torch.autograd.grad(want, (g64, v64), grad_out.double().cpu())
    assert_matches(out, want, dtype, f"gated {activation} forward")
    for got, expected in zip(grads, wants):
        assert_matches(got, expected, dtype, f"gated {activation} backward")


# FP8 output's modes: the keywords of each granularity and scale.
FP8_MODES = {
    "token": {},
    "group128": {"granularity": "group"},
    "group64-e8m0": {"granularity": "group", "group_size": 64, "scale_dtype": torch.float8_e8m0fnu},
    "mx": {"granularity": "mx"},
    "tensor": {"granularity": "tensor"},
    "tensor-static": {"granularity": "tensor", "scale": 0.01},
}


def _check_fp8(x: torch.Tensor, mode: str) -> bool:
    """swiglu's FP8 output of x in one mode, bit for bit the rule on its plain result; False
    where the mode's blocks do not divide the halved size (nothing called)."""
    options = dict(FP8_MODES[mode])
    block = {"group": options.get("group_size", 128), "mx": 32}.get(options.get("granularity"))
    if block and (x.shape[-1] // 2) % block:
        return False
    if "scale" in options:
        options["scale"] = torch.tensor([options["scale"]], device=x.device)
    with torch.no_grad():
        q, scale = glu_fused.swiglu(x, out_dtype=torch.float8_e4m3fn, **options)
        y = glu_fused.swiglu(x)
    want_q, want_scale = _fp8.quantize(y, _fp8.resolve(torch.float8_e4m3fn, **options),
                                       options.get("scale"))  # fmt: skip
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), f"fp8 {mode}: q"
    assert torch.equal(scale.float(), want_scale.float()), f"fp8 {mode}: scale"
    return True


def run(device: str, backend: str) -> int:
    """Every variant once; the number of calls made (forward, backward and an FP8 output
    count one each)."""
    calls = 0
    with glu_fused.use_backend(backend):
        for dtype in DTYPES:
            for f in _table.PACKED_FUNCTIONS.values():
                for layout in _table.LAYOUTS:
                    for make, dim in SHAPES.values():
                        _check_packed(f, make(device, dtype), dim, layout)
                        calls += 2
            for activation in _table.GATE_ACTIVATIONS:
                _check_gated(activation, device, dtype)
                calls += 2
            for make, dim in SHAPES.values():
                for mode in FP8_MODES if dim == -1 else ():
                    calls += _check_fp8(make(device, dtype), mode)
    if device == "cuda":
        torch.cuda.synchronize()
    return calls


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="cuda")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    calls = run(args.device, args.backend)
    print(f"sanitize_driver: {calls} calls on {args.device} ({args.backend}), all correct")


if __name__ == "__main__":
    main()
