"""The `Task` protocol: what is particular to a task (its data, model, loss and records); the engine
(`deqnca.engine.trainer.fit`) does the rest. `TASKS` registers them by name for the command line."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deqnca.core.registry import Registry
from deqnca.engine.meter import Meter
from deqnca.engine.options import TrainConfig

TASKS = Registry("task", "a Task subclass (deqnca.engine.Task) with its Config dataclass")


@dataclass
class Batch:
    """One step's data: this process's share (`local`) of a global batch of `size` samples."""
    data: tuple
    local: int
    size: int
    index: int = 0                    # position in the epoch


class Task:
    """What is particular to a task: twelve hooks, eleven of them called by the engine in this order.

    Construction: ``Task(cfg)`` with `cfg` an instance of the task's `Config` (a `TrainConfig` subclass).

    Set-up: `setup` (load data; before the seed is set), `build_model` (right after
    ``torch.manual_seed(cfg.seed)``; also builds what goes with the model, e.g. a pool of states),
    `steps_per_epoch`. Per epoch: `start_epoch` (also when a run resumes inside an epoch). Per step:
    `batch` -> `loss` (under autocast) -> engine backward -> `prepare_gradients` -> engine optimiser step ->
    `check_step` -> `after_step` (bookkeeping; may return a record for metrics.jsonl). At the end of each
    epoch: `end_epoch` (evaluation, main process only). Optional: `capture`, a CUDA-graph step.
    `evaluate` measures a trained model on the task's held-out data: `deqnca eval` calls it (after `setup`,
    with `model` set to the checkpoint's) for a kind that has no evaluation command of its own.

    What the engine gives a task: `device`, `rank`, `world`, `log`; `model` once built; `lr`, the rate of
    the step being taken; `meter`, the engine's running metrics (`engine.meter.Meter`: add each step's
    values, read the means in the records; checkpointed, cleared at each epoch's start); `counters`, the
    run's counts (a task adds its own by setting them in ``__init__``; checkpointed). What a task gives the
    engine besides its hooks: `state_tensors`, tensors that are part of the run (a sample pool), saved with
    each checkpoint and restored in place on resume; `find_unused_parameters`, for DDP; `retain_freed_memory`
    (default True: on a CPU, freed memory is kept for the next step, `hardware.retain_freed_memory`); `presets`, a
    `Registry` of functions returning a `Config` (``deqnca train --task NAME --preset P``; None: the
    Config's defaults); `data_record`, the identity of the data it trains on (a JSON-ready dict: ``name``,
    ``source``, ``sha256`` of the contents, counts, sample ``shape``, ``labels``; `deqnca.data.provenance`),
    set by `setup` at the latest: the engine writes it into config.json and every checkpoint (``"data"``) and
    refuses to resume a run on data with another ``sha256`` (None: the task records none, nothing is checked).
    """

    name = "task"
    Config = TrainConfig
    presets: Registry | None = None
    find_unused_parameters = False
    retain_freed_memory = True
    data_record: dict | None = None

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.rank, self.world, self.log = "cpu", 0, 1, print
        self.model: torch.nn.Module | None = None
        self.counters: dict = {}
        self.meter = Meter()
        self.lr = float(cfg.lr)
        self.state_tensors: dict[str, torch.Tensor] = {}

    # --- set-up ---
    def setup(self) -> None:
        """Load or generate data (called on every process before the seed is set)."""

    def build_model(self) -> torch.nn.Module:
        """The model to train (its parameters are what the optimiser trains)."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (called after `setup`)."""
        raise NotImplementedError

    # --- per epoch / step ---
    def start_epoch(self, epoch: int) -> None:
        """Before the first step of `epoch` the run takes: at its start, or where a resumed run goes on."""

    def batch(self, epoch: int, index: int, global_step: int) -> Batch:
        """Step `index` of `epoch` (`global_step` steps taken before it); draw its randomness from
        generators seeded by the step, so a resumed run draws what an uninterrupted one does."""
        raise NotImplementedError

    def loss(self, batch: Batch):
        """(loss, out) of this process's share of `batch`; `out` is whatever the later hooks need."""
        raise NotImplementedError

    def prepare_gradients(self) -> None:
        """After backward, before the optimiser step (default: clip to `grad_clip`)."""
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    def check_step(self, batch: Batch, out, applied: bool) -> tuple[str | None, bool]:
        """(reason to restore the last good weights or None, whether these weights may be kept as good)."""
        return None, True

    def after_step(self, batch: Batch, out, ok: bool, step: int) -> dict | None:
        """Bookkeeping after a step (`ok`: it was applied and kept; `step`: steps taken, this one included):
        add to `meter`, write a pool back. Returns a record for metrics.jsonl, or None."""
        return None

    def end_epoch(self, epoch: float, global_step: int, elapsed: float) -> dict | None:
        """The epoch's record (evaluation), on the main process; None for no record. `epoch` counts the
        epochs done (a fraction where a time budget stopped the run inside one)."""
        return None

    def evaluate(self) -> dict:
        """Measure `model` on the task's held-out data: a JSON-ready record (what `deqnca eval` prints)."""
        raise NotImplementedError(f"task {self.name!r} has no evaluation (Task.evaluate)")

    # --- optional captured CUDA-graph step ---
    def capture(self, optimizer, batch: Batch):
        """A captured training step for full batches, or None (the default: eager steps)."""
        return None

