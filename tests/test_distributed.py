"""Distributed training with GatedMLP: two gloo processes on this machine train a few steps
under DDP, under FSDP2 (fully_shard) and under tensor parallelism, and every step's
gradients and the final parameters must match one process training on the whole batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TOLERANCES

import glu_fused
from glu_fused.nn import GatedMLP

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch has no torch.distributed with the gloo backend",
)

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # before torch 2.6 FSDP2 lived in a private module, or not at all
    fully_shard = None
try:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )
except ImportError:
    parallelize_module = None

WORLD = 2
STEPS = 3
BATCH, WIDTH = 8, 16  # each rank trains on BATCH // WORLD rows
TIMEOUT_S = 120
RTOL, ATOL = TOLERANCES[torch.float64]


def _model() -> torch.nn.Module:
    """Two GatedMLPs in a residual stack, both layouts, a bias, two activations; float64 so
    that the only differences left are the order of the gradient sums."""
    torch.manual_seed(20240607)
    return torch.nn.Sequential(
        GatedMLP(WIDTH, 32, bias=True, dtype=torch.float64),
        GatedMLP(WIDTH, 24, activation="gelu_tanh", dtype=torch.float64, layout="interleaved"),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(77)
    x = torch.randn(STEPS, BATCH, WIDTH, generator=generator, dtype=torch.float64)
    return x, torch.randn(STEPS, BATCH, WIDTH, generator=generator, dtype=torch.float64)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded parameters and gradients) gathered whole; others as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """STEPS AdamW steps of the mean squared error; every step's gradients and the final
    parameters, gathered whole, by parameter name."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grads = []
    for step in range(STEPS):
        loss = (model(x[step]) - y[step]).square().mean()
        loss.backward()
        grads.append({n: _full(p.grad).detach().clone() for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
    params = {n: _full(p).detach().clone() for n, p in model.named_parameters()}
    return {"grads": grads, "params": params, "backend": glu_fused.backends.select(x.device).name}


def _wrap(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    for mlp in model:  # FSDP2: each block its own unit, then the root
        fully_shard(mlp)
    return fully_shard(model)


def _worker(rank: int, mode: str, rendezvous: str, out: str) -> None:
    """One of the WORLD processes: data parallel, each rank on its slice of the batch."""
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        model = _wrap(_model(), mode)
        x, y = _data()
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        result = _train(model, x[:, rows], y[:, rows])
        # DDP's parameter names carry the wrapper's "module." prefix.
        for key in ("params", *range(STEPS)):
            table = result["params"] if key == "params" else result["grads"][key]
            for name in list(table):
                table[name.removeprefix("module.")] = table.pop(name)
        if rank == 0:
            torch.save(result, out)
    finally:
        _leave()


def _leave() -> None:
    """Leaves the process group once both ranks are done: a rank tearing gloo down while
    its peer is still talking to it aborts the peer ("terminate called without an active
    exception")."""
    dist.barrier()
    dist.destroy_process_group()


def _spawn(worker, *args) -> None:
    """Runs worker(rank, *args) in WORLD fresh processes; fails the test on an error in any
    of them, or on a hang."""
    context = mp.start_processes(worker, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} processes took more than {TIMEOUT_S} s")


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, tensor in want.items():
        torch.testing.assert_close(
            got[name], tensor, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


@pytest.mark.parametrize(
    "mode",
    [
        "ddp",
        pytest.param(
            "fsdp2",
            marks=pytest.mark.skipif(
                fully_shard is None, reason="torch.distributed.fsdp.fully_shard needs torch 2.6+"
            ),
        ),
    ],
)
def test_data_parallel_training_matches_one_process(mode, tmp_path: Path):
    out = tmp_path / "rank0.pt"
    _spawn(_worker, mode, str(tmp_path / "rendezvous"), str(out))
    distributed = torch.load(out)
    x, y = _data()
    single = _train(_model(), x, y)
    assert distributed["backend"] == single["backend"]
    for step in range(STEPS):
        _assert_same(distributed["grads"][step], single["grads"][step], f"step {step} gradient")
    _assert_same(distributed["params"], single["params"], "final parameter")
    # The run must have moved: a test that trains nothing could not fail.
    assert not torch.equal(single["params"]["0.gate_up.weight"], _model()[0].gate_up.weight)


def _tp_worker(rank: int, layout: str, rendezvous: str, out: str) -> None:
    """Tensor parallel: gate_up column-sharded (ColwiseParallel: a contiguous block of its
    rows per rank), down row-sharded (RowwiseParallel: an all-reduce of the outputs)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(5)
        mlp = GatedMLP(WIDTH, 32, dtype=torch.float64, layout=layout)
        mesh = init_device_mesh("cpu", (WORLD,))
        parallelize_module(mlp, mesh, {"gate_up": ColwiseParallel(), "down": RowwiseParallel()})
        x, _ = _data()
        x = x[0].requires_grad_()
        out_tp = mlp(x)
        out_tp.square().sum().backward()
        # clone(): a plain tensor of the all-reduced output, which arrives as an
        # AsyncCollectiveTensor.
        result = {"out": out_tp.detach().clone(), "x_grad": x.grad.clone()}
        if rank == 0:
            torch.save(result, out)
    finally:
        _leave()


@pytest.mark.skipif(parallelize_module is None, reason="torch has no tensor parallel API")
@pytest.mark.parametrize("layout", ["interleaved", "halves"])
def test_tensor_parallel_needs_each_shard_to_hold_whole_pairs(layout, tmp_path: Path):
    """Interleaved: torch's column sharding keeps each unit's gate and up rows on one rank, so
    the sharded MLP is the MLP. Halves: rank 0 gets the gate rows and rank 1 the up rows,
    and the result is wrong (GatedMLP.shard gives per-shard halves for that layout)."""
    out = tmp_path / "rank0.pt"
    _spawn(_tp_worker, layout, str(tmp_path / "rendezvous"), str(out))
    sharded = torch.load(out)
    torch.manual_seed(5)
    mlp = GatedMLP(WIDTH, 32, dtype=torch.float64, layout=layout)
    x = _data()[0][0].requires_grad_()
    want = mlp(x)
    want.square().sum().backward()
    if layout == "interleaved":
        torch.testing.assert_close(sharded["out"], want.detach(), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(sharded["x_grad"], x.grad, rtol=RTOL, atol=ATOL)
    else:
        assert (sharded["out"] - want).abs().max() > 1e-3
