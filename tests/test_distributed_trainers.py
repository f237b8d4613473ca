"""torchrun + DDP (gloo on CPU) for the growing-NCA and maze trainers: two processes train what one
process trains with the same global batch — same weights and, for the growing NCA, the same pool.

Every random draw of a step (pool indices, rollout length, damage, fire masks, the maze DEQ's initial
noise) is made for the global batch and then sliced per process, DDP averages the gradients of the
per-slice means, and the final states are gathered back into every process's pool; so the runs
differ only by floating-point rounding (batch-size-dependent kernels, the order of the all-reduce).
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from deqnca.engine.checkpoint import read_checkpoint
from deqnca.engine.distributed import Shard

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, out, processes):
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    r = subprocess.run([sys.executable, *launcher, "-m", "deqnca.cli", *args, "--out", str(out)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])       # printed by rank 0 only


def _assert_same_tensors(a, b, prefix="", atol=1e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(prefix):
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=rtol), \
                (k, (a[k].double() - b[k].double()).abs().max().item())


def test_sharded_random_draws_are_slices_of_the_global_draw():
    """What makes W processes see one process's numbers: fire masks and initial noise drawn for the
    global batch, then rows [rank::world]."""
    from deqnca.tasks.grow.rule import GrowingNCARule
    from deqnca.tasks.maze.config import PRESETS
    from deqnca.tasks.maze.model import MazeSolverNet

    rule = GrowingNCARule({"channels": 8, "hidden": 16})
    torch.nn.init.normal_(rule.w2.weight, std=0.1)
    z = torch.rand(6, 8, 10, 10)
    full = rule.step(z, generator=torch.Generator().manual_seed(4))
    maze = MazeSolverNet({**PRESETS.build("deq").model, "width": 4})
    x = torch.zeros(5, 3, 8, 8)
    noise = maze.initial_state(x, generator=torch.Generator().manual_seed(4))
    for world in (2, 3):
        for rank in range(world):
            shard = Shard(rank, world, 6)
            part = rule.step(shard.take(z), generator=torch.Generator().manual_seed(4), shard=shard)
            assert torch.allclose(part, shard.take(full), atol=1e-6)
            shard = Shard(rank, world, 5)                      # a ragged batch: unequal slices
            assert shard.local_size == len(shard.take(x))
            part = maze.initial_state(shard.take(x), generator=torch.Generator().manual_seed(4), shard=shard)
            assert torch.equal(part, shard.take(noise))


GROW = ["grow", "train", "--target", "small", "--variant", "regenerating", "--steps", "6", "--pool-size", "16",
        "--batch-size", "4", "--rollout-steps", "8", "12", "--seed", "1", "--log-every", "2", "--device", "cpu",
        "--json"]


@pytest.mark.parametrize("trainer", ["bptt", "implicit"])
def test_grow_torchrun_two_processes_match_single_process(tmp_path, trainer):
    # regenerating: pool sampling, the highest-loss sample reseeded, 3 of the 4 damaged, the batch
    # written back; the equilibrium trainer with its default (phantom) gradient and a spectral
    # measurement every 2 steps (rank 0 only, after the step's draws)
    args = GROW + ["--trainer", trainer] + (["--spectral-every", "2"] if trainer == "implicit" else [])
    single = _run(args, tmp_path / "single", 1)
    ddp = _run(args, tmp_path / "ddp", 2)
    assert ddp["global_step"] == single["global_step"] == 6
    assert {k: ddp[k] for k in ("skipped_steps", "restored", "divergences")} == \
           {k: single[k] for k in ("skipped_steps", "restored", "divergences")}
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    a, b = read_checkpoint(tmp_path / "single" / "last")[0], read_checkpoint(tmp_path / "ddp" / "last")[0]
    _assert_same_tensors(a, b, prefix="model.")
    pa, pb = a["task.pool"], b["task.pool"]
    assert not torch.equal(pa, pa[:1].expand_as(pa))           # the pool was trained, not all seeds
    _assert_same_tensors({"pool": pa}, {"pool": pb})
    la = [json.loads(line)["loss"] for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4)                   # losses are global-batch means on rank 0


MAZE = ["maze", "train", "--width", "8", "--train-size", "5", "--batch-size", "16", "--lr", "0.05",
        "--set", "train_iters=4", "--seed", "0", "--device", "cpu", "--json"]


@pytest.mark.parametrize("model,count,epochs", [("dt", 69, 2), ("deq", 71, 1)])
def test_maze_torchrun_two_processes_match_single_process(tmp_path, model, count, epochs):
    # the last batch of each epoch is ragged (5 or 7 mazes: slices of 3+2, 4+3), so the per-process
    # losses are weighted by their share of the batch; the DEQ's random initial states are sliced
    # from the global draw. Each run its own cache: under torchrun rank 0 generates the sets.
    args = MAZE + ["--model", model, "--train-count", str(count), "--epochs", str(epochs)]
    single = _run(args + ["--cache", str(tmp_path / "cache1")], tmp_path / "single", 1)
    ddp = _run(args + ["--cache", str(tmp_path / "cache2")], tmp_path / "ddp", 2)
    assert ddp["global_step"] == single["global_step"] == 5 * epochs
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    a, b = read_checkpoint(tmp_path / "single" / "last")[0], read_checkpoint(tmp_path / "ddp" / "last")[0]
    _assert_same_tensors(a, b, prefix="model.")
