"""The one training loop. Every task (MNIST, growing NCA, mazes, yours) trains through `fit`.

Read `fit` top to bottom, nanoGPT style: set up (devices, torchrun/DDP, seeds, resume), then epochs of
steps — batch, learning rate, one guarded optimiser step, the task's bookkeeping, the step counted — with
the task's hooks (`engine.task.Task`) where tasks differ. The pieces: `engine.run` (the run's state and
its folder: checkpoints, records, resume), `engine.step` (one optimiser step with its guards),
`engine.meter` (the running metrics). What the engine guarantees for every task:

- exact resume, mid-epoch included: a task draws a step's randomness from generators seeded by the
  step, so a resumed run replays exactly what an uninterrupted one does (the tests check bit-identity);
- non-finite guards: a step with a non-finite loss or gradient is skipped, weights that a step blew up
  (or that a task's own check rejects) are replaced by the last good weights, and `max_bad_steps`
  consecutive bad steps stop the run; non-finite weights are never saved;
- crash-safe checkpoints (`engine.checkpoint`) at the end of each epoch, every `checkpoint_every`
  steps, at a time-budget stop and on Ctrl-C or SIGTERM; `metrics.jsonl` is trimmed on resume to the
  checkpoint's history, so the record never disagrees with the weights;
- a run owns its folder: the folder's lock (`engine.runfiles`) is held from its checks to the run's end,
  so a second run into it is refused; a fresh run never overwrites a run folder (``overwrite=True``
  deletes the run's files, and only those); on resume, options that would change the run are refused,
  only `RESUMABLE` ones (how long to train) may change;
- a CPU run measures its own step on the allowed paths (threads, layout, bfloat16 where the CPU has units
  for it) and takes the fastest, never the slower side of the fixed all-cores float32 path
  (`engine.cpu_path`); the choice is recorded and a resumed run keeps it;
- progress bar with ETA, learning-rate schedules, time budgets, bfloat16 autocast, torchrun/DDP
  (`engine.distributed`) and a captured CUDA-graph step where the task offers one.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm  # the text bar everywhere: tqdm.auto warns in a notebook without ipywidgets

from deqnca.core.amp import amp_context
from deqnca.core.configs import ConfigError
from deqnca.core.fileio import fault_point
from deqnca.engine import cpu_path, distributed
from deqnca.engine.options import AMP_MODES, MAX_COUNT, OPTIMIZERS, SCHEDULES, TrainConfig  # noqa: F401  (re-exported)
from deqnca.engine.run import Run, RunFolder, count_parameters
from deqnca.engine.step import GuardedStep
from deqnca.engine.task import TASKS, Batch, Task  # noqa: F401  (re-exported: tasks import them from here)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what batch schedulers send before SIGKILL), taken like Ctrl-C: a checkpoint at the end of the
    step. The command exits with 128 + 15 = 143."""
    exit_code = 143

    def __str__(self) -> str:
        return "terminated (SIGTERM)"


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training is taken at the end of the current step (so the checkpoint
    it leaves is the state between two steps, and resuming is exact); a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self.signum, self._old = False, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise self.exception()
        self.requested, self.signum = True, signum

    def exception(self) -> KeyboardInterrupt:
        """What the requested stop raises: `Terminated` for SIGTERM, KeyboardInterrupt for Ctrl-C."""
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of `epoch`: a permutation seeded by (seed, epoch), so every process and a resumed
    run see the same batches.

    Examples:
        >>> epoch_order(4, 0, 0).sort().values.tolist()
        [0, 1, 2, 3]
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` over `params`.

    Examples:
        >>> opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(optimizer="adam", lr=1e-3))
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """The learning rate at optimiser step `step`, `progress` (0..1) through the run.

    Examples:
        >>> lr_at(TrainConfig(lr=1.0, schedule="cosine"), 0, 0.5)
        0.5
    """
    lr = cfg.lr
    if cfg.warmup_steps:
        lr = lr * min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "step":
        return lr * (cfg.lr_decay if step >= cfg.lr_decay_at else 1.0)
    return lr


def resolve_amp(amp: str, device: str) -> tuple[str, str]:
    """("off" | "bf16", why): "auto" becomes bf16 only where this machine runs it faster."""
    if amp != "auto":
        return amp, "set explicitly"
    if str(device).startswith("cuda"):
        return "off", "auto on CUDA: float32 (bf16 on GPUs not measured here)"
    from deqnca.engine.hardware import choose_cpu_path

    choice = choose_cpu_path(device, train=True)       # a ~1 s measurement of the rule's training step
    return choice["amp"], choice["reason"]


def fit(task: Task, out, device: str = "cpu", resume: bool = False, overwrite: bool = False,
        changed: set | None = None, log=print, progress: bool = True) -> dict:
    """Train `task`, checkpointing to `out`; returns the run's summary (history, parameters, model).

    Args:
        task: the task, holding its config (`task.cfg`).
        out: the run folder (created; a folder that holds a run needs `resume` or `overwrite`).
        device: "cpu", "cuda" or "cuda:N" (under torchrun each process takes its local GPU).
        resume: continue the run in `out` from its last checkpoint, exactly.
        overwrite: clear a run already in `out` and start afresh.
        changed: the options the user set explicitly (on resume, only `RESUMABLE` ones may differ).
        log: where progress lines go (rank 0 only).
        progress: show the progress bar.

    Returns:
        {"out", "parameters", "history", "model", "counters", "global_step", "elapsed_s"}.

    Examples:
        >>> from deqnca.tasks.mnist import MnistTask  # doctest: +SKIP
        >>> fit(MnistTask(MnistTask.Config(epochs=1), data), "runs/try")  # doctest: +SKIP
    """
    rank, world, device = distributed.init_from_env(device)
    if rank:
        log, progress = (lambda *_: None), False
    folder = RunFolder(out, main=rank == 0)
    with folder.owned():         # the folder's lock, from its checks to the run's end: one run per folder
        resumed = folder.open(task, resume, overwrite, changed, world, device)     # the checkpoint's record or None
        cfg = task.cfg
        _check_config(cfg, device, world)
        task.device, task.rank, task.world, task.log = device, rank, world, log
        task.setup()

        torch.manual_seed(cfg.seed)
        model = task.model = task.build_model().to(device)
        optimizer = make_optimizer(model.parameters(), cfg)
        run = Run(counters={"skipped_steps": 0, "restored": 0, **task.counters})
        if resumed:
            folder.restore(task, optimizer, run)
        folder.claim(run if resumed else None)        # every check passed: the run's files are recorded
        task.counters, task.meter = run.counters, run.meter
        amp = _training_path(task, run, resumed, log)
        folder.write_config(task, amp, run.cpu_path["reason"], world, run.cpu_path)
        step = GuardedStep(task, optimizer, run, amp, warnings.warn if rank == 0 else _silent, folder.path)
        steps, every = task.steps_per_epoch(), cfg.checkpoint_interval()
        # one clock under torchrun with a time budget: every process stops at the same step
        agree = (lambda t: distributed.agree_max(t, device)) if world > 1 and cfg.time_budget else None

        with _DeferredInterrupt() as stop, folder.saved_on_interrupt(task, optimizer, run):
            while run.epoch < cfg.epochs and not run.out_of_time(cfg.time_budget):
                bar = _start_epoch(task, run, steps, progress)
                for _ in bar:
                    batch = task.batch(run.epoch, run.step_in_epoch, run.global_step)
                    step.set_lr(lr_at(cfg, run.global_step, run.fraction(cfg.epochs, steps, cfg.time_budget)))
                    ok, step_out = step(batch)
                    record = task.after_step(batch, step_out, ok, run.global_step + 1)
                    fault_point("step", Path(str(run.global_step)))
                    run.step_taken()
                    if record is not None:
                        folder.append({"global_step": run.global_step, **record})
                    if stop.requested:          # Ctrl-C or SIGTERM, taken here where the step is complete
                        raise stop.exception()
                    run.count_time(agree)
                    _show_means(bar, run, steps)
                    if every and run.global_step % every == 0 and run.step_in_epoch < steps:
                        folder.save(task, optimizer, run)
                        distributed.barrier()
                    if run.out_of_time(cfg.time_budget):
                        break
                bar.close()
                _end_epoch(task, optimizer, run, folder, steps)
    return {"out": str(folder.path), "parameters": count_parameters(model), "history": run.history,
            "model": model, "counters": run.counters, "global_step": run.global_step, "elapsed_s": run.elapsed}


def _silent(*args, **kwargs) -> None:
    """Warnings of processes other than the main one."""


def _check_config(cfg: TrainConfig, device: str, world: int) -> None:
    """Refuse a config no run can use here."""
    cfg.validate()
    distributed.check_batch_split(cfg.batch_size, world)
    if cfg.amp != "auto":
        amp_context(cfg.amp, device)                  # refuses an unknown mode


def _training_path(task: Task, run: Run, resumed: dict | None, log) -> str:
    """Threads, layout and precision of the run (engine/cpu_path.py) put in force and kept on `run`; the
    precision ("off" or "bf16"). A resumed run keeps its recorded path; a new CPU run measures its step."""
    cfg, device = task.cfg, task.device
    if str(device) == "cpu" and task.retain_freed_memory:
        from deqnca.engine.hardware import retain_freed_memory

        retain_freed_memory()
    if resumed and resumed.get("cpu_path"):
        path = {**resumed["cpu_path"], "reason": "kept from the run's start: " + resumed["cpu_path"]["reason"]}
        if str(device) == "cpu":
            cpu_path.apply(task, path)
    elif (str(device) == "cpu" and task.world == 1 and cfg.cpu_path == "auto" and "OMP_NUM_THREADS" not in os.environ
          and run.epoch < cfg.epochs):
        def next_batch():
            task.start_epoch(run.epoch)
            return task.batch(run.epoch, run.step_in_epoch, run.global_step)
        steps_left = (cfg.epochs - run.epoch) * task.steps_per_epoch() - run.step_in_epoch
        path = cpu_path.choose(task, cfg.amp, next_batch, steps_left=steps_left, time_budget=cfg.time_budget)
        cpu_path.apply(task, path)
        log(f"CPU path ({path['seconds']:.1f} s to choose): {path['reason']}")
    else:
        amp, why = resolve_amp(cfg.amp, device)
        path = cpu_path.fixed_path(task, amp, "OMP_NUM_THREADS is set" if "OMP_NUM_THREADS" in os.environ and
                                   str(device) == "cpu" else f"--cpu-path {cfg.cpu_path}, {device}, amp {why}")
    run.cpu_path = path
    return path["amp"]


def _start_epoch(task: Task, run: Run, steps: int, progress: bool):
    """Start the epoch (or go on in it, where a run resumes): the task's start, a fresh meter at its first
    step, the clock; returns the progress bar over its remaining steps."""
    task.start_epoch(run.epoch)
    if run.step_in_epoch == 0:
        run.meter.reset()
    task.model.train()
    run.clock = time.time()          # evaluation time (and waiting for it) is not training time
    epochs = task.cfg.epochs
    label = task.name if epochs == 1 else f"{task.name} epoch {run.epoch + 1}/{epochs}"
    return tqdm(range(run.step_in_epoch, steps), desc=label, initial=run.step_in_epoch, total=steps,
                dynamic_ncols=True, mininterval=1.0, disable=not progress)


def _show_means(bar, run: Run, steps: int) -> None:
    """The meter's running means on the progress bar (every ten steps and at the epoch's last)."""
    if not bar.disable and (run.step_in_epoch % 10 == 1 or run.step_in_epoch == steps):
        bar.set_postfix({name: f"{value:.4g}" for name, value in run.meter.means().items()}, refresh=False)


def _end_epoch(task: Task, optimizer, run: Run, folder: RunFolder, steps: int) -> None:
    """The end of the epoch (or a time-budget stop inside it): the task's record (main process), the
    next epoch's position and good weights, a checkpoint."""
    epoch_done = run.step_in_epoch >= steps
    if folder.main:                 # the main process evaluates and writes; the others wait for it
        done = run.epoch + (1 if epoch_done else run.step_in_epoch / steps)
        record = task.end_epoch(done, run.global_step, run.elapsed)
        if record is not None:
            record = {**record, "global_step": run.global_step}
            run.history.append(record)
            folder.append(record)
    if epoch_done:
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        run.good_weights = copy.deepcopy(task.model.state_dict())
    folder.save(task, optimizer, run)
    distributed.barrier()
