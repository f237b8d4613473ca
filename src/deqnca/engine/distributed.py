"""Data-parallel training with PyTorch's own engine: launch with torchrun, train with DDP.

    torchrun --nproc_per_node 4 -m deqnca.cli train --preset essay --device cuda

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; each process takes its share of every global batch
(the global batch size and the batch order are those of a single-process run), DDP averages the
gradients, and rank 0 alone evaluates, logs and writes checkpoints. The growing-NCA and maze trainers
follow the same scheme; their random tensors are drawn for the global batch and sliced (`Shard`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

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


def check_batch_split(batch_size: int, world: int) -> None:
    """Every process takes an equal share of each global batch."""
    if world > 1 and batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")


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


# --- helpers for trainers whose batches carry random draws (grow, mazes) ---------------------------

@dataclass(frozen=True)
class Shard:
    """This process's rows `[rank::world]` of a global batch of `size` samples.

    Random tensors of a step (fire masks, initial noise, Hutchinson vectors) are drawn for the
    whole global batch from the step's seeded generator, exactly as one process draws them, and then
    sliced with `take`: W processes see the numbers that one process sees."""
    rank: int
    world: int
    size: int

    def take(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rank::self.world]

    @property
    def local_size(self) -> int:
        return len(range(self.rank, self.size, self.world))


def gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    """The inverse of `Shard.take` for equal slices: every process's (b, ...) rows, gathered into the
    global (b·world, ...) batch in global order (row i came from rank i % world)."""
    if world <= 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over the processes (a new tensor; `t` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree_max(value: float, device) -> float:
    """The largest of the processes' values (e.g. elapsed seconds, so that a time budget or a
    time-dependent learning rate stops / changes on every process at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())



def shutdown():
    """End the process group that `init_from_env` started (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish(code: int = 0) -> int:
    """The end of a command under torchrun: end the process group, flush, and leave at once.

    Leaving through the interpreter's teardown now and then aborts a gloo process after its work is
    done ("terminate called without an active exception" with no Python frame, about 1 run in 30 of
    the grow test on a loaded 2-core CPU, torch 2.13, with or without destroy_process_group), which
    torchrun reports as a failed run; os._exit skips that teardown. Without torchrun: returns `code`."""
    if world_size_from_env() <= 1:
        return code
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
