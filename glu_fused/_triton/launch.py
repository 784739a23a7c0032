"""One Triton kernel launch per op call, from the call's plan (glu_fused._C.plan_*): the
pointers, the runs of its PairLayout (csrc/glu_layout.h), the activation and its
parameters.

Tile sizes, a heuristic rather than autotuning (an autotuned choice would have to be
measured on every shape, and the interpreter cannot time anything):
  * a tile holds TILE = 4096 outputs: with 8 warps, 16 per thread, so that each thread
    issues two or more 16-byte loads per tensor and a 64 MiB input still makes thousands
    of programs for 132 SMs;
  * BLOCK_E is the run length rounded up to a power of two, at most TILE; short runs are
    stacked BLOCK_R = TILE / BLOCK_E to a tile, so a tile is never mostly masked;
  * warps: one per 512 outputs of the tile, 1 to 8.
"""

import contextlib

import torch
import triton
import triton.language as tl

from . import kernels

TILE = 4096
OUTPUTS_PER_WARP = 512
MAX_WARPS = 8

KERNELS = {"forward": kernels.forward_kernel, "backward": kernels.backward_kernel}


def config(runs: int, run_len: int, pairs: bool = False) -> dict:
    """Grid, tile and warps for `runs` runs of `run_len` outputs (interleaved pairs: 2
    inputs per output in one run): the heuristic above."""
    block_e = min(triton.next_power_of_2(run_len), TILE)
    block_r = min(TILE // block_e, triton.next_power_of_2(runs))
    warps = min(max(block_r * block_e // OUTPUTS_PER_WARP, 1), MAX_WARPS)
    # Offsets inside a run reach elem_stride * (run_len + BLOCK_E): 64-bit past int32.
    wide = (2 if pairs else 1) * (run_len + block_e) >= 2**31
    programs = triton.cdiv(runs, block_r) * triton.cdiv(run_len, block_e)
    return {
        "grid": (programs,),
        "BLOCK_R": block_r,
        "BLOCK_E": block_e,
        "WIDE": wide,
        "num_warps": warps,
    }


def launch(kernel: str, plan: dict, like: torch.Tensor) -> None:
    """Launches the forward or backward kernel over a plan's runs, on like's device and its
    current stream."""
    settings = config(plan["runs"], plan["run_len"], plan["pairs"])
    grid = settings.pop("grid")
    guard = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        KERNELS[kernel][grid](
            *plan["pointers"],
            plan["runs"],
            plan["run_len"],
            plan["runs_per_outer"],
            *plan["strides"],
            float(plan["alpha"]),
            float(plan["limit"]),
            ACT=plan["activation"],
            COMPUTE=tl.float64 if like.dtype == torch.float64 else tl.float32,
            PAIRS=plan["pairs"],
            GATE_FIRST=plan["gate_first"],
            **settings,
        )
