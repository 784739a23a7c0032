"""FP8 output's benchmark: the fused activation + quantization against the code users write
instead, the activation then the quantization in eager PyTorch and torch.compile of the two
together (Inductor fuses them: the strong peer). bfloat16 in, float8_e4m3fn out, every
granularity. Every contender's (q, scale) is checked first: q * scale against the float64
activation, within what an e4m3 quantization of a bfloat16 result may err.

    python bench/run.py --fp8                      # the sweep, written to bench/results/<device>/
    python bench/fp8.py --sizes 64x4096 --functions swiglu

Bytes per output element, fused: 4 read (two bfloat16 inputs) + 1 written + the scales
(4 bytes per row, per 128 or per 32 elements); the dynamic per-tensor scale takes two
passes (its amax must be known before any element is quantized): the inputs read twice (9),
or on the CPU, up to 2^22 results, the float32 activations kept between them (13). The
unfused code moves 4 + 2 (the activation written) + 2 + 2 (read back for the amax and the
quantization) + 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from cases import parse_shape
from contenders import gpt_oss_apply_gate
from run import _raise_recompile_limit
from timing import Clock, copy_bandwidth, median, plan_for, time_interleaved

import glu_fused
from glu_fused import _table

E4M3 = torch.float8_e4m3fn
FP8_MAX = 448.0
EPS = 1e-10
MODES = {"tensor": 0, "token": None, "group": 128, "mx": 32}  # the block along the row
FUNCTIONS = ("swiglu", "clamped_swiglu")
CPU_SIZES = ((1, 4096), (64, 4096), (1024, 4096))
GPU_SIZES = ((1, 4096), (1024, 4096), (16384, 4096), (16384, 14336))


def activation(function: str):
    """The activation as users write it, in the input's dtype."""
    if function == "clamped_swiglu":
        return lambda x: gpt_oss_apply_gate(x, _table.DEFAULT_ALPHA, _table.DEFAULT_LIMIT)

    def swiglu(x):
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    return swiglu


def user_quantize(y: torch.Tensor, mode: str):
    """FP8 quantization as users write it (torchao's and vLLM's reference code): the amax per
    block, scale = amax / 448, q = (y / scale) saturated; float32 scales."""
    y = y.float()
    block = MODES[mode]
    if mode == "tensor":
        scale = y.abs().amax().clamp(min=EPS).reshape(1) / FP8_MAX
        return (y / scale).clamp(-FP8_MAX, FP8_MAX).to(E4M3), scale
    if block is None:
        scale = y.abs().amax(-1, keepdim=True).clamp(min=EPS) / FP8_MAX
        return (y / scale).clamp(-FP8_MAX, FP8_MAX).to(E4M3), scale
    blocks = y.unflatten(-1, (-1, block))
    scale = blocks.abs().amax(-1, keepdim=True).clamp(min=EPS) / FP8_MAX
    if mode == "mx":  # a power of two, stored as E8M0
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    q = (blocks / scale).clamp(-FP8_MAX, FP8_MAX).to(E4M3).flatten(-2)
    scale = scale.squeeze(-1)
    return q, scale.to(torch.float8_e8m0fnu) if mode == "mx" else scale


def contenders(function: str, mode: str, device: torch.device) -> dict:
    act = activation(function)

    def eager(x):
        return user_quantize(act(x), mode)

    compiled = torch.compile(eager, dynamic=False)
    ours_fn = getattr(glu_fused, function)
    layout = "interleaved" if function == "clamped_swiglu" else "halves"

    def ours(x):  # mx: E8M0 scales, the format's own
        return ours_fn(x, layout=layout, out_dtype=E4M3, granularity=mode)

    backend = glu_fused.backends.select(device).name  # the one "auto" picks
    return {f"ours:{backend}": (ours, backend), "eager": (eager, None), "compile": (compiled, None)}


def reference_y(function: str, x: torch.Tensor) -> torch.Tensor:
    layout = "interleaved" if function == "clamped_swiglu" else "halves"
    return getattr(glu_fused.reference, function)(x.double(), layout=layout)


def check(function: str, mode: str, fn, x: torch.Tensor) -> float:
    """The worst error of q * scale against the float64 activation, in units of what e4m3
    of a bfloat16 result may err (2^-4 relative plus the block's subnormal floor); >1 fails."""
    q, scale = fn(x)
    block = MODES[mode]
    ref = reference_y(function, x).float()
    if mode == "tensor":
        back, floor = q.float() * scale.float(), ref.abs().max()
    else:
        size = ref.shape[-1] if block is None else block
        blocks = q.float().unflatten(-1, (-1, size))
        back = (blocks * scale.float().reshape(*blocks.shape[:-1], 1)).flatten(-2)
        floor = ref.unflatten(-1, (-1, size)).abs().amax(-1, keepdim=True)
        floor = floor.expand(*floor.shape[:-1], size).flatten(-2)
    bound = 2.0**-4 * ref.abs() + 2.0**-8 * ref.abs() + 2.0**-9 * floor + 1e-30
    return ((back - ref).abs() / bound).max().item()


# The CPU kernel keeps up to this many activations (float32) between the per-tensor scale's
# two passes (csrc/cpu/glu_cpu.cpp, kFp8ScratchElements) instead of computing them again.
CPU_KEPT_ACTIVATIONS = 1 << 22


def bytes_per_element(mode: str, tokens: int, hidden: int, device: torch.device) -> float:
    """What ours moves per output element: the inputs read (4 bytes), q written (1), the
    scales; per tensor, a second pass: the inputs again (4), or on the CPU up to
    CPU_KEPT_ACTIVATIONS the float32 activations written and read back (8)."""
    scale = {"tensor": 0.0, "token": 4 / hidden, "group": 4 / 128, "mx": 1 / 32}[mode]
    second = 0.0
    if mode == "tensor":
        kept = device.type == "cpu" and tokens * hidden <= CPU_KEPT_ACTIVATIONS
        second = 8.0 if kept else 4.0
    return 4.0 + second + 1 + scale


def run(functions, sizes, device: torch.device) -> list[dict]:
    torch._dynamo.reset()  # every case compiles its peer afresh (static shapes)
    _raise_recompile_limit()
    clock, plan = Clock(device), plan_for(device)
    copy = copy_bandwidth(device, plan) if device.type == "cuda" else None
    rows = []
    for function in functions:
        for mode in MODES:
            for tokens, hidden in sizes:
                if MODES[mode] and hidden % MODES[mode]:
                    continue
                x = torch.randn(tokens, 2 * hidden, device=device, dtype=torch.bfloat16) * 4
                named = contenders(function, mode, device)
                steps, contexts, errors = {}, {}, {}
                for name, (fn, backend) in named.items():
                    ctx = (
                        (lambda b=backend: glu_fused.use_backend(b))
                        if backend
                        else contextlib.nullcontext
                    )
                    with ctx(), torch.no_grad():
                        errors[name] = check(function, mode, fn, x)
                    steps[name] = lambda i, fn=fn, x=x: fn(x)
                    contexts[name] = ctx
                with torch.no_grad():
                    samples, _ = time_interleaved(steps, contexts, 1, clock, plan)
                ms = {name: median(s) for name, s in samples.items()}
                elements = tokens * hidden
                row = {
                    "function": function,
                    "mode": mode,
                    "tokens": tokens,
                    "hidden": hidden,
                    "ms": ms,
                    "error": errors,
                    "bytes_per_element": bytes_per_element(mode, tokens, hidden, device),
                }
                if copy is not None:
                    ours = next(n for n in ms if n.startswith("ours"))
                    gbps = elements * row["bytes_per_element"] / ms[ours] / 1e6
                    row["copy_percent"] = 100 * gbps / copy["GB/s"]
                rows.append(row)
                print(table_line(row), flush=True)
    return rows


def table_line(row: dict) -> str:
    ms = row["ms"]
    ours = next(n for n in ms if n.startswith("ours"))
    best_peer = min((n for n in ms if not n.startswith("ours")), key=ms.get)
    speedup = ms[best_peer] / ms[ours]
    cells = [
        row["function"],
        row["mode"],
        f"{row['tokens']}x{row['hidden']}",
        f"{row['bytes_per_element']:.2f}",
        *(f"{ms[n]:.3f}" for n in ms),
        f"{speedup:.2f}x vs {best_peer}",
        " ".join(f"{n} {e:.2f}" for n, e in row["error"].items()),
    ]
    if "copy_percent" in row:
        cells.append(f"{row['copy_percent']:.0f}%")
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], device: str) -> str:
    names = list(rows[0]["ms"])
    head = [
        "function",
        "mode",
        "tokens x hidden",
        "bytes/elem (ours)",
        *(f"{n} ms" for n in names),
        "ours vs best peer",
        "error / bound (<= 1 passes)",
    ]
    if "copy_percent" in rows[0]:
        head.append("% of copy")
    lines = [
        f"# FP8 output: bfloat16 in, float8_e4m3fn out ({device})",
        "",
        "Median ms per call, the contenders interleaved (bench/fp8.py). Peers: the activation",
        "then the quantization in eager PyTorch, and torch.compile of the two.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *(table_line(r) for r in rows),
    ]
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out_dir: Path, device: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "fp8.md", out_dir / "fp8.json"
    md.write_text(markdown(rows, device))
    js.write_text(json.dumps(rows, indent=1))
    return [md, js]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=list(FUNCTIONS))
    parser.add_argument("--sizes", nargs="+", type=parse_shape)
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    rows = run(args.functions, sizes, device)
    from run import RESULTS_ROOT, device_name, device_slug

    out = args.out or RESULTS_ROOT / device_slug(device)
    for path in write(rows, out, device_name(device)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
