"""Mazes (the easy-to-hard benchmark): DT-recall and the maze DEQ trained on small mazes, as a task.

AdamW with warm-up and a cosine schedule over the epochs or the time budget, whichever ends first
(Bansal et al.'s settings); DT trains with the progressive loss, the DEQ at the equilibrium reached
from a mixed zero/noise state within a random iteration budget (docs/mazes.md).
"""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch

from deqnca.engine import distributed
from deqnca.engine.trainer import TASKS, Batch, Task, epoch_order
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze import loops
from deqnca.tasks.maze.config import PRESETS, MazeConfig
from deqnca.tasks.maze.model import MazeSolverNet, deq_loss, dt_loss, quick_accuracy


def train_maze(model_config: dict, cfg: MazeConfig, out, device: str = "cpu", resume: bool = False, cache=None,
               log=print, **fit_kw) -> dict:
    """Train a maze solver-net of `model_config` through the engine.

    Examples:
        >>> train_maze(PRESETS.build("dt").model, MazeConfig(train_size=5, epochs=1), "runs/try")  # doctest: +SKIP
    """
    from deqnca.engine.trainer import fit
    from deqnca.tasks.maze.model import MazeNetConfig

    cfg.model = MazeNetConfig.from_dict(model_config).to_dict()
    if cache is not None:
        cfg.cache = str(cache)
    return fit(MazeTask(cfg), out, device=device, resume=resume, log=log, **fit_kw)


def load_mixed(size: int, count: int, split: str, generator: str, cache=None, log=None):
    """The first `count` layouts of a set; generator is a maze spec (loops.py), "mix" (the five perfect
    generators) or comma-separated specs ("dfs,dfs+loops=0.05"); several interleave their sets (maze i of
    each in turn), so that any prefix holds them in equal shares."""
    from deqnca.tasks.maze.loops import parse_mix

    gens = [s.name for s in parse_mix(generator)]
    share = -(-count // len(gens))
    parts = [mazes.load_set(size, share, split, cache=cache, log=log, generator=g) for g in gens]
    return np.stack(parts, 1).reshape(-1, *parts[0].shape[1:])[:count]


def maze_record(cfg: MazeConfig, sizes: list, train: list, val) -> dict:
    """The identity of a maze run's data (`deqnca.data.provenance`): its generator set (each generator's
    version), sizes, counts and the split seed, hashed with the layouts' own hashes (`layouts_digest`)."""
    import hashlib

    gens = [spec.name for spec in loops.parse_mix(cfg.generator)]
    lines = [f"train {s} {mazes.layouts_digest(lay)}\n" for s, lay in zip(sizes, train)]
    lines.append(f"test {cfg.train_size} {mazes.layouts_digest(val)}\n")
    side = mazes.image_side(cfg.train_size)
    return {"name": f"mazes:{cfg.generator}", "source": "generated",
            "sha256": hashlib.sha256("".join(lines).encode()).hexdigest(),
            "generators": dict(mazes.spec_identity(g) for g in gens), "sizes": list(sizes),
            "train": cfg.train_count, "test": cfg.val_count, "seed": 0, "shape": [3, side, side], "labels": [0, 1]}


def batch_plan(counts, batch_size: int, seed: int, epoch: int) -> list:
    """An epoch's batches as (set, rows) pairs: each set (one maze size) in its own seeded order, cut
    into batches, the batches of all sets shuffled together (one set: the order of a single set)."""
    plan = []
    for k, n in enumerate(counts):
        perm = epoch_order(n, seed + 1_000_003 * k, epoch)
        plan += [(k, perm[i:i + batch_size]) for i in range(0, n, batch_size)]
    if len(counts) > 1:
        plan = [plan[i] for i in epoch_order(len(plan), seed + 7_919, epoch).tolist()]
    return plan


@TASKS.register("maze")
class MazeTask(Task):
    """Train a maze solver-net (`cfg.model`: a MazeNetConfig dict) on mazes of `cfg.train_size`."""

    name = "maze"
    Config = MazeConfig
    retain_freed_memory = False     # its solves of varying size would fragment a heap that keeps them (hardware.py)
    presets = PRESETS

    def __init__(self, cfg: MazeConfig):
        super().__init__(cfg)

    def setup(self):
        c, main = self.cfg, self.rank == 0
        sizes = sorted({c.train_size, *c.train_sizes})
        for size in sizes:
            mazes.check_size(size)
        if not main:             # the main process generates and caches the maze sets, the others read them
            distributed.barrier()
        cache = c.cache or None
        train = [load_mixed(s, c.train_count, "train", c.generator, cache, self.log) for s in sizes]
        self.sets = [torch.as_tensor(layouts).to(self.device) for layouts in train]
        self.val = load_mixed(c.train_size, c.val_count, "test", c.generator, cache, self.log)
        self.data_record = maze_record(c, sizes, train, self.val)
        if main:
            distributed.barrier()
        last = c.train_count % c.batch_size
        if self.world > 1 and 0 < last < self.world:
            raise ValueError(f"the last batch of an epoch holds {last} mazes, fewer than the {self.world} processes: "
                             "choose a training count or batch size that leaves at least one maze per process")

    def build_model(self):
        model = MazeSolverNet(self.cfg.model)
        # the input projection is differentiated only by DT's BPTT max-iterations term (alpha < 1); with any
        # other combination it is out of the graph, which DDP must be told
        c = model.config
        trained = c.model == "dt" and c.gradient == "bptt" and self.cfg.alpha < 1
        self.find_unused_parameters = model.projection is not None and not trained
        return model

    def steps_per_epoch(self):
        return sum(math.ceil(len(lay) / self.cfg.batch_size) for lay in self.sets)

    def start_epoch(self, epoch):
        self.plan = batch_plan([len(lay) for lay in self.sets], self.cfg.batch_size, self.cfg.seed, epoch)

    def batch(self, epoch, index, global_step):
        c = self.cfg
        # every random choice of a step is seeded by the step: --resume replays it exactly, and every process
        # makes the same choices (random tensors are drawn for the global batch, then sliced)
        self.rng = random.Random(c.seed * 1_000_003 + global_step)
        self.gen = torch.Generator(device=self.device).manual_seed(c.seed * 7_919 + global_step)
        k, rows = self.plan[index]
        idx = rows[self.rank::self.world].to(self.device)
        self.shard = distributed.Shard(self.rank, self.world, len(rows)) if self.world > 1 else None
        return Batch(mazes.to_images(self.sets[k][idx]), len(idx), len(rows), index)

    def loss(self, batch):
        x, y = batch.data
        if self.model.config.model == "dt":
            loss, stats = dt_loss(self.model, x, y, self.cfg.alpha, self.rng, self.gen, self.shard)
        else:
            loss, stats = deq_loss(self.model, x, y, self.cfg.residual_weight, self.rng, self.gen, self.shard)
        return loss, (loss, stats)

    def after_step(self, batch, out, ok, step):
        loss, stats = out
        if ok and batch.index % 10 == 0:          # the only host syncs of the loop: a sampled running loss
            nstep = stats.nstep if stats is not None else self.model.config.train_iters
            batch_loss = (distributed.all_sum(loss.detach() * batch.local) / batch.size).item()
            self.meter.add("loss", batch_loss * batch.size, batch.size)
            self.meter.add("nstep", distributed.agree_max(nstep, self.device) if self.world > 1 else nstep)

    def end_epoch(self, epoch, global_step, elapsed):
        c, model = self.cfg, self.model
        iters = model.config.train_iters * (1 if model.config.model == "dt" else 4)
        val = quick_accuracy(model, self.val, max_iter=iters)
        rec = {"epoch": epoch, "global_step": global_step, "train_loss": self.meter.mean("loss", 0.0),
               f"val_solved_{c.train_size}": val, "elapsed_s": elapsed, **copy.deepcopy(self.counters)}
        self.log(f"epoch {epoch:.2f}: loss {rec['train_loss']:.4f}  solved {100 * val:.1f}% of {len(self.val)} "
                 f"held-out {c.train_size}x{c.train_size}  ({elapsed:.0f}s trained)")
        return rec
