"""What a LLaMA-7B-shaped MLP (hidden H 4096, intermediate I 11008, bfloat16) keeps for
backward, its peak memory over a forward plus backward, and its step time, for:

- eager: LLaMA's MLP as transformers writes it, down_proj(silu(gate_proj(x)) * up_proj(x));
- GatedMLP (lean=False): the fused activation between the modules' own calls (x + 3I);
- GatedMLP: the lean block (x + 2I kept per token);
- GatedMLP (recompute='projection'): x alone;
- Liger-Kernel's LigerSwiGLUMLP, where it runs (a GPU).

Kept bytes: the distinct storages autograd saves (saved_tensors_hooks), parameters left out,
per token. Peak: the CUDA allocator's peak on a GPU; on the CPU the profiler's running total of
allocations (both above what was allocated before the step; on the CPU one profiled step gives
the step's peak and the backward's). Time: the median of the timed steps (forward and
backward); each contender has run several steps (its check, its peaks) just before, so no
warm-up step is added. --repeats steps are timed below --large-from tokens, --large-repeats
from there on (a float32 step of the 7B shape at 4096 tokens takes most of a minute on one CPU
core). Every contender's output and input gradient are first checked against the eager MLP
computed in float32: no further from it than twice the eager MLP's own error in the dtype.

    python bench/mlp_memory.py                         # CPU; --device cuda on a GPU
    python bench/mlp_memory.py --tokens 64 --hidden 256 --intermediate 688   # small
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import cpu_memory_timeline, peak_memory_bytes  # noqa: E402
from run import device_slug  # noqa: E402

from glu_fused.nn import GatedMLP  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class EagerMLP(nn.Module):
    """transformers' LlamaMLP."""

    def __init__(self, fused: GatedMLP):
        super().__init__()
        gate_w, up_w, _, _ = fused.projections()
        h, i = fused.gate_up.in_features, fused.hidden_features
        factory = {"dtype": gate_w.dtype, "device": gate_w.device, "bias": False}
        self.gate_proj, self.up_proj = nn.Linear(h, i, **factory), nn.Linear(h, i, **factory)
        self.down_proj = nn.Linear(i, fused.down.out_features, **factory)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate_w)
            self.up_proj.weight.copy_(up_w)
            self.down_proj.weight.copy_(fused.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def contenders(fused: GatedMLP, device: torch.device) -> dict[str, nn.Module]:
    eager = EagerMLP(fused)
    out = {"eager (LLaMA MLP)": eager}
    for name, kwargs in (
        ("GatedMLP, lean=False", {"lean": False}),
        ("GatedMLP (lean)", {}),
        ("GatedMLP, recompute='projection'", {"recompute": "projection"}),
    ):
        mlp = GatedMLP(
            fused.gate_up.in_features, fused.hidden_features, dtype=fused.down.weight.dtype,
            device=device, **kwargs,
        )  # fmt: skip
        mlp.load_state_dict(fused.state_dict())
        out[name] = mlp
    if device.type == "cuda":
        try:
            from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
        except ImportError:
            pass
        else:
            config = type("Config", (), {"hidden_size": fused.gate_up.in_features})()
            config.intermediate_size, config.hidden_act = fused.hidden_features, "silu"
            liger = LigerSwiGLUMLP(config).to(device, fused.down.weight.dtype)
            liger.load_state_dict(eager.state_dict())
            out["Liger LigerSwiGLUMLP"] = liger
    return out


def kept_bytes(module: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


def step(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(dy)

    return run


def peaks(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, device) -> tuple:
    """(the step's peak, the backward's own peak), or None where not to be had. The step's:
    a forward and backward above what was allocated before them, with no gradients held before
    (a step that freed the last step's would count them out). The backward's: above what it
    starts with (the forward's kept tensors). On the CPU, one profiled step gives both (the
    profiler cannot count the freeing of what it did not see allocated, so the backward's is
    split from the step's timeline where the backward starts)."""
    if device.type != "cpu":
        module.zero_grad(set_to_none=True)
        x.grad = None
        step_peak = peak_memory_bytes(lambda: module(x).backward(dy), device)
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        return step_peak, peak_memory_bytes(lambda: out.backward(dy), device)

    def forward_backward() -> None:
        out = module(x)
        with torch.profiler.record_function("mlp_memory.backward"):
            out.backward(dy)

    module.zero_grad(set_to_none=True)
    x.grad = None
    timeline, at = cpu_memory_timeline(forward_backward, "mlp_memory.backward")
    if not timeline:
        return 0, None
    step_peak = max(0, max(total for _, total in timeline) - timeline[0][1])
    if at is None:
        return step_peak, None
    before = [total for ts, total in timeline if ts <= at]
    after = [total for ts, total in timeline if ts > at]
    return step_peak, max(0, max(after, default=0) - before[-1]) if before else None


def seconds(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def results(module, x, dy) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and x's gradient of one step, in float32."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    out = module(x)
    out.backward(dy)
    return out.detach().float(), x.grad.float()


def reference_results(eager: nn.Module, x, dy) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager MLP's output and x's gradient computed in float32 (weights and inputs upcast):
    what every contender's, the eager MLP's own included, are measured against."""
    upcast = copy.deepcopy(eager).float()
    return results(upcast, x.detach().float().requires_grad_(), dy.float())


def error(module, want, x, dy) -> float:
    """The larger of the output's and x's gradient's worst error against `want`, relative to
    the largest magnitude of each."""
    got = results(module, x, dy)
    return max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want))


def check(found: float, eager_error: float) -> str:
    """'ok', or that this contender's output or input gradient is further from the float32
    computation than twice the eager MLP's own rounding in the dtype (plus 1e-5)."""
    if found <= 2 * eager_error + 1e-5:
        return "ok"
    return f"error {found:.2g} against float32, beyond twice the eager MLP's {eager_error:.2g}"


def measure(args: argparse.Namespace) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    fused = GatedMLP(args.hidden, args.intermediate, dtype=dtype, device=device)
    fused.reset_parameters(std=0.02)
    rows = []
    named = contenders(fused, device)
    for tokens in args.tokens:
        x = torch.randn(tokens, args.hidden, dtype=dtype, device=device).requires_grad_()
        dy = torch.randn(tokens, args.hidden, dtype=dtype, device=device)
        eager = named["eager (LLaMA MLP)"]
        want = reference_results(eager, x, dy)
        eager_error = error(eager, want, x, dy)
        repeats = args.repeats if tokens < args.large_from else args.large_repeats
        for name, module in named.items():
            found = eager_error if module is eager else error(module, want, x, dy)
            row = {"contender": name, "tokens": tokens, "status": check(found, eager_error)}
            row["error"] = found
            if row["status"] == "ok":
                row["kept_bytes_per_token"] = kept_bytes(module, x) / tokens
                row["peak_bytes"], row["backward_peak_bytes"] = peaks(module, x, dy, device)
                row["seconds"] = seconds(step(module, x, dy), device, repeats)
                row["steps_timed"] = repeats
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def markdown(rows: list[dict], args: argparse.Namespace, device_name: str) -> str:
    h, i = args.hidden, args.intermediate
    itemsize = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    lines = [
        f"# MLP memory: H {h}, I {i}, {args.dtype}, {device_name}, torch {torch.__version__}",
        "",
        f"Expected per token: eager x + 4I = {(h + 4 * i) * itemsize} bytes; lean x + 2I = "
        f"{(h + 2 * i) * itemsize} ({100 * 2 * i / (h + 4 * i):.0f}% less); recompute x = "
        f"{h * itemsize} ({100 * 4 * i / (h + 4 * i):.0f}% less).",
        "",
        f"Peaks count from no gradient held, so they include the weights' gradients "
        f"(3HI = {_mib(3 * h * i * itemsize)} MiB, the same for every contender); the rest is "
        "activations and the backward's temporaries. Error: the worst of the output's and x's "
        "gradient's against the eager MLP computed in float32, relative to the largest "
        "magnitude; a contender passes at twice the eager MLP's own (plus 1e-5).",
        "",
        "| tokens | contender | kept for backward, bytes per token | vs eager | peak MiB, "
        "forward + backward | peak MiB above the weights' gradients | peak MiB, backward alone "
        "| step ms | steps timed | error |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    weight_grads = 3 * h * i * itemsize
    eager = {r["tokens"]: r for r in rows if r["contender"].startswith("eager")}
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['tokens']} | {r['contender']} | {r['status']} | | | | | | | "
                f"{r['error']:.2g} |"
            )
            continue
        base = eager[r["tokens"]].get("kept_bytes_per_token")
        change = f"{100 * (r['kept_bytes_per_token'] / base - 1):+.0f}%" if base else "-"
        peak, backward = (_mib(r[k]) for k in ("peak_bytes", "backward_peak_bytes"))
        above = None if r["peak_bytes"] is None else r["peak_bytes"] - weight_grads
        lines.append(
            f"| {r['tokens']} | {r['contender']} | {r['kept_bytes_per_token']:.0f} | {change} | "
            f"{peak} | {_mib(above)} | {backward} | {1000 * r['seconds']:.1f} | "
            f"{r['steps_timed']} | {r['error']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--repeats", type=int, default=3, help="steps timed per contender")
    parser.add_argument(
        "--large-repeats", type=int, default=1, help="steps timed from --large-from tokens on"
    )
    parser.add_argument("--large-from", type=int, default=2048)
    parser.add_argument("--out", type=Path, help="the Markdown table (default: results/<device>)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = measure(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    text = markdown(rows, args, name)
    print(text)
    out = args.out or RESULTS / device_slug(device) / "mlp_memory.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
