"""Train a tiny GLU transformer on Aesop's fables, once with an unfused MLP as PyTorch users
write it and once with glu_fused's GatedMLP (its lean block and fused kernels), and compare.

    python examples/train_tiny_lm.py                   # the CPU: a minute or two
    python examples/train_tiny_lm.py --device cuda     # a GPU, as is

Both runs start from the same weights and see the same batches; only the MLP's code differs:
`down_proj(act(gate_proj(x)) * up_proj(x))` in eager PyTorch (LLaMA's MLP), or GatedMLP,
which keeps x and the gate/up projection for backward (x alone with --recompute) and writes
its backward over them. The script prints both loss curves side by side, their largest
difference, the time per step and the memory per step, and exits with status 1 if the curves
differ by more than --tolerance.

Memory per step, measured on the second step (the optimizer's state exists by then; the
step is left out of the timings), on top of what was allocated when the step began:
- "peak": on CUDA, torch.cuda.max_memory_allocated. The CPU allocator keeps no such
  statistics, so on the CPU it is the peak of the bytes of tensor storages that the step's
  ops create and that are alive at once, tracked with a TorchDispatchMode (forward, backward
  and optimizer; scratch space inside a kernel is not seen, for either backend).
- "saved": the bytes of activations autograd keeps from forward to backward (distinct
  storages, parameters left out), counted with torch.autograd.graph.saved_tensors_hooks.
  It is where GatedMLP saves memory: x + 2 x hidden elements per token, where the unfused MLP
  keeps x + 4 x hidden.

The model: character tokens, learned positions, pre-norm blocks of causal self-attention and
glu_fused.nn.GatedMLP (LLaMA's SwiGLU MLP by default), tied input and output embeddings.
The corpus, examples/data/fables.txt, is Aesop's fables retold in plain English.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import glu_fused
from glu_fused.nn import GatedMLP

CORPUS = Path(__file__).parent / "data" / "fables.txt"
MEMORY_STEP = 1  # the step whose memory is measured: the second


class UnfusedMLP(nn.Module):
    """LLaMA's MLP as transformers writes it: down_proj(act(gate_proj(x)) * up_proj(x)), from a
    GatedMLP's weights."""

    def __init__(self, fused: GatedMLP):
        super().__init__()
        gate_w, up_w, _, _ = fused.projections()
        self.gate_proj, self.up_proj = (nn.Linear(*w.T.shape, bias=False) for w in (gate_w, up_w))
        self.down_proj = nn.Linear(fused.hidden_features, fused.down.out_features, bias=False)
        with torch.no_grad():
            for linear, weight in zip(
                (self.gate_proj, self.up_proj, self.down_proj), (gate_w, up_w, fused.down.weight)
            ):
                linear.weight.copy_(weight)
        self.act_fn = glu_fused._table.GATE_ACTIVATIONS[fused.activation].torch_form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """x + attention(norm(x)), then x + GatedMLP(norm(x))."""

    def __init__(self, width: int, heads: int, hidden: int, args: argparse.Namespace):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.mlp_norm = nn.RMSNorm(width)
        recompute = "projection" if args.recompute else None
        self.mlp = GatedMLP(
            width,
            hidden,
            activation=args.activation,
            layout=args.layout,
            recompute=recompute,
            fp8=args.fp8,
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, args: argparse.Namespace):
        super().__init__()
        self.embed = nn.Embedding(vocab, args.width)
        nn.init.normal_(self.embed.weight, std=0.02)  # small: it is the output layer too
        self.positions = nn.Parameter(torch.randn(args.seq_len, args.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(args.width, args.heads, args.hidden, args) for _ in range(args.layers)
        )
        self.norm = nn.RMSNorm(args.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T  # tied output embedding


@dataclass
class Step:
    loss: float
    seconds: float


class SavedActivations:
    """Counts the bytes autograd saves for backward inside the block: each distinct storage
    once, parameters left out (both runs hold the same parameters)."""

    def __init__(self, model: nn.Module):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedActivations:
        self.storages.clear()
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


class LiveTensors(TorchDispatchMode):
    """The peak bytes of tensor storages created by ops inside the block and alive at once.

    Each op's fresh outputs (not views, not in-place results: the schema's alias info says
    which) are counted when made and uncounted when their storage is freed. Autograd runs
    the backward under the same mode, so its ops are counted too."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for ret, value in zip(returns, out if len(returns) > 1 else (out,)):
            if ret.alias_info is None:
                for t in tree_leaves(value):
                    if isinstance(t, torch.Tensor):
                        self._allocated(t.untyped_storage())
        return out

    def _allocated(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        self.live += size
        self.bytes = max(self.bytes, self.live)
        weakref.finalize(storage, self._freed, size)

    def _freed(self, size: int) -> None:
        self.live -= size


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "bytes", once the block is done, is the block's peak allocation
    on top of what was allocated when it began (CUDA: the allocator's; CPU: LiveTensors)."""
    result = {"bytes": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - held
    else:
        with LiveTensors() as live:
            yield result
        result["bytes"] = live.bytes


def load_corpus(device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """The corpus as character ids, and the characters."""
    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], device=device), chars


def batches(data: torch.Tensor, args: argparse.Namespace) -> list[torch.Tensor]:
    """Every step's batch of (seq_len + 1)-token windows, drawn once so both runs share them."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    windows = torch.arange(args.seq_len + 1)
    starts = torch.randint(
        0, len(data) - args.seq_len - 1, (args.steps, args.batch), generator=generator
    )
    return [data[(s[:, None] + windows).to(data.device)] for s in starts]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model, optimizer, schedule, batch, saved=None) -> float:
    """One step of next-character prediction; the loss."""
    with saved or contextlib.nullcontext():
        logits = model(batch[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    return loss.item()


def train(
    fused: bool, vocab: int, data: list[torch.Tensor], args: argparse.Namespace
) -> tuple[list[Step], dict[str, int], TinyLM]:
    """Trains a freshly seeded model, with GatedMLP (under glu_fused.use_backend(args.backend))
    or with the unfused MLP of the same weights: every step's loss and time, the memory of step
    MEMORY_STEP, and the model."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = TinyLM(vocab, args)
    if not fused:
        for block in model.blocks:
            block.mlp = UnfusedMLP(block.mlp)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / args.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    steps, memory = [], {}
    with glu_fused.use_backend(args.backend):
        for i, batch in enumerate(data):
            synchronize(device)
            start = time.perf_counter()
            if i == MEMORY_STEP:
                saved = SavedActivations(model)
                with peak_memory(device) as peak:
                    loss = training_step(model, optimizer, schedule, batch, saved)
                memory = {"peak": peak["bytes"], "saved": saved.bytes}
            else:
                loss = training_step(model, optimizer, schedule, batch)
            synchronize(device)
            steps.append(Step(loss, time.perf_counter() - start))
    return steps, memory, model


@torch.no_grad()
def sample(model: TinyLM, chars: list[str], prompt: str, length: int, device) -> str:
    """Greedy continuation of `prompt`, to see what the model learned."""
    index = {c: i for i, c in enumerate(chars)}
    tokens = torch.tensor([[index[c] for c in prompt]], device=device)
    for _ in range(length):
        logits = model(tokens[:, -model.positions.shape[0] :])
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return "".join(chars[i] for i in tokens[0].tolist())


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def summary(name: str, steps: list[Step], memory: dict[str, int], device: torch.device) -> str:
    """Time: the median over the steps after the first two (warm-up, and the measured one)."""
    seconds = statistics.median(s.seconds for s in (steps[2:] or steps))
    how = "CUDA allocator" if device.type == "cuda" else "live tensors"
    return (
        f"{name:>24}: {1000 * seconds:8.1f} ms/step   peak {mib(memory.get('peak', 0))} "
        f"({how})   saved for backward {mib(memory.get('saved', 0))}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="the fused backend compared (default auto)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=344, help="GatedMLP hidden units (~8/3 width)")
    p.add_argument("--activation", default="silu", choices=glu_fused.ACTIVATIONS)
    p.add_argument("--layout", default="halves", choices=("halves", "interleaved"))
    p.add_argument(
        "--recompute", action="store_true", help="GatedMLP keeps x alone (recompute='projection')"
    )
    p.add_argument(
        "--fp8",
        choices=("tensor", "token"),
        help="GatedMLP's down projection in FP8 (its input quantized per tensor or per token "
        "by the fused kernel; backward unchanged)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sample", type=int, default=0, help="characters to generate at the end")
    p.add_argument(
        "--tolerance",
        type=float,
        help="largest loss difference accepted (default 2e-3; 5e-2 with --fp8, whose forward "
        "rounds h and the down weight to FP8)",
    )
    args = p.parse_args(argv)
    if args.tolerance is None:
        args.tolerance = 5e-2 if args.fp8 else 2e-3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, chars = load_corpus(device)
    shared = batches(data, args)
    with glu_fused.use_backend(args.backend):
        fused_name = glu_fused.backends.select(device).name
    print(
        f"{len(data)} characters, vocabulary {len(chars)}; {args.layers} layers of width "
        f"{args.width}, GatedMLP {args.activation} ({args.layout}) hidden {args.hidden}"
        f"{f', FP8 down projection ({args.fp8})' if args.fp8 else ''}; "
        f"{args.steps} steps of {args.batch} x {args.seq_len} tokens on {device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    ref, ref_memory, _ = train(False, len(chars), shared, args)
    fused, fused_memory, model = train(True, len(chars), shared, args)
    fused_label = f"fused ({fused_name})"

    print(f"\n{'step':>5} {'loss unfused':>15} {'loss fused':>12} {'|diff|':>9}")
    diffs = [abs(a.loss - b.loss) for a, b in zip(ref, fused)]
    for i, (a, b) in enumerate(zip(ref, fused)):
        if i % args.log_every == 0 or i == len(ref) - 1:
            print(f"{i + 1:>5} {a.loss:>15.5f} {b.loss:>12.5f} {diffs[i]:>9.2e}")
    worst = max(diffs)
    print(f"\nlargest loss difference over {len(diffs)} steps: {worst:.2e}\n")
    print(summary("unfused", ref, ref_memory, device))
    print(summary(fused_label, fused, fused_memory, device))
    if args.sample:
        print(f"\nsample ({fused_label}):")
        print(sample(model, chars, "THE FOX AND THE ", args.sample, device))
    if worst > args.tolerance:
        print(f"\nthe loss curves differ by {worst:.2e} > {args.tolerance:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
