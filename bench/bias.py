"""The bias and token-count modes' benchmark (docs/contract.md, "Bias and token counts").

Bias: swiglu with a bias on the gate/up projection, forward and forward + backward (the
input's and the bias's gradients), against what users write instead,
``F.silu(a + b1) * (u + b2)``, eager and torch.compile'd (Inductor fuses it: the strong
peer). Token counts: x [E, T, 2H] (8 experts, T 4096) with 25% and 100% of the rows valid,
against the same fused kernel given the whole [E, T, 2H] (what a kernel without counts
must process).

    python bench/bias.py                       # CPU sizes, results to bench/results/<device>/
    python bench/bias.py --tokens 1024 --hidden 2048

Bytes per token, forward (s: the dtype's size; H: the halved width): ours reads 2H and
writes H (the bias, 2H once, is noise): 3H s. Eager reads x's halves and the biases and
writes a + b1 and u + b2 (4H s), then silu reads and writes H (2H s), the product reads 2H
and writes H (3H s): 9H s. Backward (ours): grad_out H and x 2H read, grad_x 2H written,
the bias partials 2H float32 per 64 rows: 5H s (+ 0.125 H float32 bytes). Token counts: a
valid row moves 3H s; a row past the count none (it is neither read nor written).

MLP: a LLaMA MLP with biases on its projections (I: intermediate size), one training step
(forward, then the gradients of x and of every parameter), as GatedMLP(bias=True) runs it
(the lean block: the bias in the GEMMs, its gradient summed by the in-place backward pass)
against the module users write (``down(silu(gate(x)) * up(x))``, eager and compiled). Its
ablation "ours, bias summed apart" is the same block summing the bias gradient in a pass of
its own over the projections' gradients (the block before the fused sums): not a peer, it
shows the pass the fusion saves, 2I s a token read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from run import _raise_recompile_limit
from timing import Clock, median, plan_for, time_interleaved
from torch import nn

import glu_fused
from glu_fused import _gated_mlp
from glu_fused.nn import GatedMLP


def user_swiglu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    a, u = x.chunk(2, dim=-1)
    b1, b2 = bias.chunk(2)
    return F.silu(a + b1) * (u + b2)


def ours_swiglu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return glu_fused.swiglu(x, bias=bias)


def _train_step(fn):
    def step(x, bias, grad):
        out = fn(x, bias)
        return torch.autograd.grad(out, (x, bias), grad)

    return step


def _bound(step, *args):
    return lambda i: step(*args)


def _time(named: dict, clock, plan, grad_mode: bool) -> dict[str, float]:
    steps = {name: fn for name, fn in named.items()}
    contexts = {name: contextlib.nullcontext for name in named}
    with torch.set_grad_enabled(grad_mode):
        samples, _ = time_interleaved(steps, contexts, 1, clock, plan)
    return {name: median(s) for name, s in samples.items()}


def _worst_error(got, want) -> float:
    """The largest of each tensor's max error relative to its reference's largest value."""
    return max(((g.double() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want))


def bias_rows(tokens: int, hidden: int, dtype: torch.dtype, device) -> list[dict]:
    clock, plan = Clock(device), plan_for(device)
    x = (torch.randn(tokens, 2 * hidden, device=device) * 3).to(dtype).requires_grad_()
    bias = torch.randn(2 * hidden, device=device).to(dtype).requires_grad_()
    grad = torch.randn(tokens, hidden, device=device).to(dtype)
    compiled = torch.compile(user_swiglu, dynamic=False)
    # Every contender's result and gradients checked against the float64 reference first.
    x64 = x.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_()
    want = glu_fused.reference.swiglu(x64, bias=b64)
    want_grads = torch.autograd.grad(want, (x64, b64), grad.double())
    forward = {"ours": ours_swiglu, "eager": user_swiglu, "compile": compiled}
    errors = {}
    for name, fn in forward.items():
        out = fn(x, bias)
        grads = torch.autograd.grad(out, (x, bias), grad)
        errors[name] = _worst_error((out, *grads), (want, *want_grads))
    size = torch.finfo(dtype).bits // 8
    rows = []
    fwd = _time({n: (lambda i, f=f: f(x, bias)) for n, f in forward.items()}, clock, plan, False)
    rows.append(
        {
            "case": "bias forward",
            "shape": f"{tokens}x{2 * hidden}",
            "dtype": str(dtype).removeprefix("torch."),
            "ms": fwd,
            "bytes": {"ours": 3 * hidden * size * tokens, "eager": 9 * hidden * size * tokens},
            "error": errors,
        }
    )
    steps = {n: _bound(_train_step(f), x, bias, grad) for n, f in forward.items()}
    both = _time(steps, clock, plan, True)
    rows.append(
        {
            "case": "bias forward+backward",
            "shape": f"{tokens}x{2 * hidden}",
            "dtype": str(dtype).removeprefix("torch."),
            "ms": both,
            "bytes": {"ours": (3 + 5) * hidden * size * tokens + hidden * tokens // 8},
            "error": errors,
        }
    )
    return rows


def moe_rows(experts: int, tokens: int, hidden: int, dtype: torch.dtype, device) -> list[dict]:
    clock, plan = Clock(device), plan_for(device)
    x = (torch.randn(experts, tokens, 2 * hidden, device=device) * 3).to(dtype)
    size = torch.finfo(dtype).bits // 8
    rows = []
    for percent in (25, 100):
        valid = tokens * percent // 100
        # Skewed routing below 100%: the experts' counts differ, their mean is `valid`.
        spread = torch.linspace(0.5, 1.5, experts) if percent < 100 else torch.ones(experts)
        counts = (spread * valid).round().clamp(0, tokens).to(torch.int32).to(device)
        named = {
            "ours (valid_tokens)": lambda i, counts=counts: glu_fused.swiglu(
                x, valid_tokens=counts
            ),
            "ours (whole [E, T, 2H])": lambda i: glu_fused.swiglu(x),
        }
        out = glu_fused.swiglu(x, valid_tokens=counts)
        full = glu_fused.swiglu(x)
        mask = torch.arange(tokens, device=device)[None, :] < counts[:, None]
        assert torch.equal(out[mask], full[mask]), "valid rows differ from the whole tensor's"
        ms = _time(named, clock, plan, False)
        rows_valid = int(counts.sum())
        rows.append(
            {
                "case": f"MoE {percent}% valid",
                "shape": f"{experts}x{tokens}x{2 * hidden}",
                "dtype": str(dtype).removeprefix("torch."),
                "ms": ms,
                "bytes": {
                    "ours (valid_tokens)": 3 * hidden * size * rows_valid,
                    "ours (whole [E, T, 2H])": 3 * hidden * size * experts * tokens,
                },
                "error": {},
            }
        )
    return rows


class LlamaMLP(nn.Module):
    """The MLP users write, with biases on its projections."""

    def __init__(self, hidden: int, intermediate: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        kw = {"bias": True, "dtype": dtype, "device": device}
        self.gate_proj = nn.Linear(hidden, intermediate, **kw)
        self.up_proj = nn.Linear(hidden, intermediate, **kw)
        self.down_proj = nn.Linear(intermediate, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@contextlib.contextmanager
def bias_summed_apart():
    """The lean block as it was before its in-place pass summed the bias gradient: the pass
    asked for no sums, so the block sums the projections' gradients itself."""
    fused = _gated_mlp._in_place

    def apart(dh, gate, up, activation, bias_grad):
        return fused(dh, gate, up, activation, False)

    _gated_mlp._in_place = apart
    try:
        yield
    finally:
        _gated_mlp._in_place = fused


def _mlp_step(module, x, grad):
    params = [x, *module.parameters()]
    return lambda i: torch.autograd.grad(module(x), params, grad)


def _mlp_error(module, x, grad, want) -> float:
    """The worst relative error of the output, x's gradient and the projections' biases'."""
    x = x.detach().requires_grad_()
    out = module(x)
    biases = [p for n, p in module.named_parameters() if n.endswith("bias")]
    grads = torch.autograd.grad(out, [x, *biases], grad)
    if len(biases) == 2:  # GatedMLP: gate_up's bias, then down's
        grads = (grads[0], *grads[1].chunk(2), grads[2])
    return _worst_error((out, *grads), want)


def mlp_rows(tokens: int, hidden: int, intermediate: int, dtype: torch.dtype, device) -> list[dict]:
    clock, plan = Clock(device), plan_for(device)
    users = LlamaMLP(hidden, intermediate, dtype, device)
    ours = GatedMLP.from_mlp(users)
    compiled = torch.compile(users, dynamic=False)
    x = torch.randn(tokens, hidden, device=device).to(dtype).requires_grad_()
    grad = torch.randn(tokens, hidden, device=device).to(dtype)
    # Every contender against the float64 run of the users' module.
    users64 = LlamaMLP(hidden, intermediate, torch.float64, device)
    users64.load_state_dict(users.state_dict())
    x64 = x.detach().double().requires_grad_()
    out64 = users64(x64)
    biases64 = [m.bias for m in (users64.gate_proj, users64.up_proj, users64.down_proj)]
    want = (out64, *torch.autograd.grad(out64, [x64, *biases64], grad.double()))
    contenders = {
        "ours": ours,
        "ours, bias summed apart": ours,
        "eager": users,
        "compile": compiled,
    }
    contexts = {name: contextlib.nullcontext for name in contenders}
    contexts["ours, bias summed apart"] = bias_summed_apart
    errors = {}
    for name, module in contenders.items():
        with contexts[name]():
            errors[name] = _mlp_error(module, x, grad, want)
    steps = {name: _mlp_step(module, x, grad) for name, module in contenders.items()}
    samples, _ = time_interleaved(steps, contexts, 1, clock, plan)
    size = torch.finfo(dtype).bits // 8
    # The activations' traffic of the GLU and its backward, per token (the GEMMs' left out):
    # ours forward reads g, u (2I) and writes h (I); the in-place pass reads dh, g, u and
    # writes h, dg, du (6I); apart, the bias sum reads dg, du again (2I).
    glu_bytes = {"ours": 9 * intermediate, "ours, bias summed apart": 11 * intermediate}
    return [
        {
            "case": "MLP bias, training step",
            "shape": f"{tokens}x{hidden}, I {intermediate}",
            "dtype": str(dtype).removeprefix("torch."),
            "ms": {name: median(s) for name, s in samples.items()},
            "bytes": {n: b * size * tokens for n, b in glu_bytes.items()},
            "error": errors,
            "ablations": ["ours, bias summed apart"],
        }
    ]


def _peers(row: dict) -> list[str]:
    """What the first contender is measured against: the others, but for the row's
    ablations (ours, changed to show what a part of it saves: no peer)."""
    return [n for n in list(row["ms"])[1:] if n not in row.get("ablations", ())]


def table_line(row: dict) -> str:
    ms = row["ms"]
    names = list(ms)
    ours = names[0]
    best_peer = min(_peers(row), key=ms.get)
    cells = [
        row["case"],
        row["shape"],
        row["dtype"],
        *(f"{n} {ms[n]:.3f}" for n in names),
        f"{ms[best_peer] / ms[ours]:.2f}x vs {best_peer}",
        ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in row["bytes"].items()),
        ", ".join(f"{n} {e:.1e}" for n, e in row["error"].items()),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], device: str) -> str:
    """One table per kind of row (their contenders differ), median ms per contender."""
    lines = [f"# Bias and token counts on {device}", ""]
    for kind in ("bias", "MLP", "MoE"):
        mine = [r for r in rows if r["case"].startswith(kind)]
        if not mine:
            continue
        names = [f"{n} ms" for n in mine[0]["ms"]]
        head = ["case", "shape", "dtype", *names, "ours vs best peer", "bytes moved", "error"]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for row in mine:
            cells = table_line(row).split(" | ")
            cells[3 : 3 + len(names)] = [f"{v:.3f}" for v in row["ms"].values()]
            lines.append(" | ".join(cells))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--mlp-tokens", type=int, default=2048)
    parser.add_argument("--mlp-hidden", type=int, default=512)
    parser.add_argument("--mlp-intermediate", type=int, default=1408)
    parser.add_argument("--moe-hidden", type=int, default=512)
    parser.add_argument("--moe-tokens", type=int, default=4096)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from run import device_slug

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _raise_recompile_limit()
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        rows += bias_rows(args.tokens, args.hidden, dtype, device)
        for row in rows[-2:]:
            print(table_line(row), flush=True)
    for dtype in (torch.bfloat16, torch.float32):
        mlp = args.mlp_tokens, args.mlp_hidden, args.mlp_intermediate
        rows += mlp_rows(*mlp, dtype, device)
        print(table_line(rows[-1]), flush=True)
    for row in moe_rows(args.experts, args.moe_tokens, args.moe_hidden, torch.bfloat16, device):
        rows.append(row)
        print(table_line(row), flush=True)
    slug = device_slug(device)
    out = args.out or Path(__file__).parent / "results" / slug
    worst = max((e for r in rows for e in r["error"].values()), default=0.0)
    assert worst < 0.02, f"a contender is wrong: relative error {worst:.2e}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bias.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "bias.md").write_text(markdown(rows, slug))
    print(f"wrote {out / 'bias.md'}")


if __name__ == "__main__":
    main()
