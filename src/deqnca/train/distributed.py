"""Data-parallel training with PyTorch's own engine: launch with torchrun, train with DDP.

    torchrun --nproc_per_node 4 -m deqnca.cli train --preset essay --device cuda

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; each process takes its share of every global batch
(the global batch size and the batch order are those of a single-process run), DDP averages the
gradients, and rank 0 alone evaluates, logs and writes checkpoints.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str) -> tuple[int, int, str]:
    """(rank, world_size, device for this process); initialises the process group once."""
    world = world_size_from_env()
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), dist.get_world_size(), device


def all_ok(flag: bool, device) -> bool:
    """True only if every process says True — so all skip a non-finite step together (DDP would hang
    if one process skipped the backward that the others run)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
