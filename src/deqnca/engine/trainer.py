"""The one training loop. Every task (MNIST, growing NCA, mazes, yours) trains through `fit`.

Read it top to bottom, nanoGPT style: set up (devices, torchrun/DDP, seeds, resume), then epochs of
steps — batch, learning rate, forward and loss, backward, guards, optimiser step — with the task's
hooks where tasks differ (minGPT's `Trainer` with callbacks). What the engine guarantees for every task:

- exact resume, mid-epoch included: a task draws a step's randomness from generators seeded by the
  step, so a resumed run replays exactly what an uninterrupted one does (the tests check bit-identity);
- non-finite guards: a step with a non-finite loss or gradient is skipped, weights that a step blew up
  (or that a task's own check rejects) are replaced by the last good weights, and `max_bad_steps`
  consecutive bad steps stop the run; non-finite weights are never saved;
- crash-safe checkpoints (`engine.checkpoint`) at the end of each epoch, every `checkpoint_every`
  steps, at a time-budget stop and on Ctrl-C; `metrics.jsonl` is trimmed on resume to the
  checkpoint's history, so the record never disagrees with the weights;
- a fresh run never overwrites a run folder (``overwrite=True`` clears it); on resume, options that
  would change the run are refused, only `RESUMABLE` ones (how long to train) may change;
- progress bar with ETA, learning-rate schedules, time budgets, bfloat16 autocast, torchrun/DDP
  (`engine.distributed`) and a captured CUDA-graph step where the task offers one.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from deqnca.core.amp import amp_context
from deqnca.core.configs import ConfigError, load_dataclass
from deqnca.core.fileio import fault_point
from deqnca.core.registry import Registry
from deqnca.engine import distributed
from deqnca.engine.checkpoint import (
    CheckpointError,
    all_finite,
    atomic_write,
    check_run_record,
    load_optimizer_state,
    load_state,
    read_checkpoint,
    save_checkpoint,
)
from deqnca.engine.options import AMP_MODES, MAX_COUNT, OPTIMIZERS, SCHEDULES, TrainConfig  # noqa: F401  (re-exported)

# options that may change when a run is resumed: how long it trains; everything else is the run itself
RESUMABLE = ("epochs", "steps", "time_budget", "checkpoint_every", "max_bad_steps", "cuda_graph")
RUN_FILES = ("last.json", "metrics.jsonl", "config.json")
TASKS = Registry("task", "a Task subclass (deqnca.engine.Task) with its Config dataclass")


@dataclass
class Batch:
    """One step's data: this process's share (`local`) of a global batch of `size` samples."""
    data: tuple
    local: int
    size: int
    index: int = 0                    # position in the epoch


class Task:
    """What is particular to a task; the engine calls these hooks, in this order.

    Construction: ``Task(cfg)`` with `cfg` an instance of the task's `Config` (a `TrainConfig` subclass).
    `setup()` loads data (before the seed is set), `build_model()` builds the model right after
    ``torch.manual_seed(cfg.seed)``; then, per step: `batch` -> `loss` (under autocast) -> engine backward
    -> `prepare_gradients` -> engine optimiser step -> `check_step` -> `after_step` -> `on_step_end`;
    per epoch: `end_epoch` (evaluation, main process only). `state()` / `load_state()` carry extra
    state (e.g. a sample pool) through checkpoints.
    """

    name = "task"
    Config = TrainConfig
    find_unused_parameters = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.rank, self.world, self.log = "cpu", 0, 1, print
        self.model: torch.nn.Module | None = None
        self.counters: dict = {}

    # --- set-up ---
    def setup(self) -> None:
        """Load or generate data (called on every process before the seed is set)."""

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def parameters(self):
        """What the optimiser trains (default: every model parameter)."""
        return self.model.parameters()

    def loss_module(self) -> torch.nn.Module:
        """The module whose forward(batch) returns (loss, out); DDP wraps it under torchrun."""
        return _TaskLoss(self)

    def after_build(self, optimizer) -> None:
        """Everything built after the model and the optimiser (e.g. a pool of states)."""

    def current_lr(self) -> float:
        """The learning rate of the step just taken (the schedule's, set by the engine before each step)."""
        return float(self.optimizer.param_groups[0]["lr"])      # a tensor where a CUDA graph captures the step

    # --- per epoch / step ---
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batch(self, epoch: int, index: int, global_step: int) -> Batch:
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

    def after_step(self, batch: Batch, out, ok: bool, global_step: int) -> None:
        """Bookkeeping after a step (running sums, a pool written back)."""

    def on_step_end(self, global_step: int) -> dict | None:
        """A progress record for metrics.jsonl after `global_step` steps, or None."""
        return None

    def postfix(self) -> dict:
        """What the progress bar shows."""
        return {}

    def end_epoch(self, epoch: float, global_step: int, elapsed: float) -> dict | None:
        """The epoch's record (evaluation), on the main process; None for no record."""
        return None

    def summary(self, history: list) -> str:
        return ""

    # --- state carried by checkpoints ---
    def state(self) -> tuple[dict, dict]:
        """(tensors, JSON-able dict) of the task's own state at a checkpoint."""
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        """Restore what `state()` returned."""

    # --- optional captured CUDA-graph step ---
    def capture(self, optimizer, batch: Batch):
        """A captured training step for full batches, or None (the default: eager steps)."""
        return None

    def checkpoint_interval(self) -> int:
        """Steps between mid-epoch checkpoints (0: at the end of each epoch only)."""
        return self.cfg.checkpoint_every

    def bar_label(self, epoch: int) -> str:
        return f"{self.name} epoch {epoch + 1}/{self.cfg.epochs}"


class _TaskLoss(torch.nn.Module):
    """The task's model and loss as one module, so DistributedDataParallel can wrap the forward pass."""

    def __init__(self, task: Task):
        super().__init__()
        self.model = task.model
        self._task = [task]          # not a submodule

    def forward(self, batch):
        return self._task[0].loss(batch)


class _DeferredInterrupt:
    """Ctrl-C during training is taken at the end of the current step (so the checkpoint it leaves is the
    state between two steps, and resuming is exact); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested, self._old = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


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


def _trim_metrics(path: Path, global_step: int) -> None:
    """Keep only the records of steps the checkpoint has (a crash may leave later ones)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break                       # a torn last line
        if rec.get("global_step", 0) <= global_step:
            keep.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(s + "\n" for s in keep)))


def _append(path: Path, rec: dict) -> None:
    fault_point("metrics", path)
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()


def resolve_config(cfg, saved: dict, changed: set | None):
    """The config of a resumed run: the saved one, with only `RESUMABLE` options taken from `cfg`.
    An option in `changed` (given explicitly; None: any that differs) that would alter the run is refused."""
    new = asdict(cfg)
    known = {k: v for k, v in saved.items() if k in new}
    if changed is None:
        changed = {k for k in new if k in known and new[k] != known[k]}
    refused = sorted(k for k in changed if k not in RESUMABLE and k in known and new[k] != known[k])
    if refused:
        detail = ", ".join(f"{k} ({known[k]!r} in the run, {new[k]!r} now)" for k in refused)
        raise ConfigError(f"--resume continues the run as it was started; these options would change it: "
                          f"{detail}. Drop them, or start a new run in another --out")
    return load_dataclass(type(cfg), {**known, **{k: new[k] for k in RESUMABLE if k in new}}, "train config")


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> bool:
    """A fresh run needs an empty folder: one that holds a run is refused unless `overwrite`. Returns
    whether there is a checkpoint to resume from (a run killed before its first one starts afresh)."""
    if resume:
        if (out / "last.json").exists():
            return True
        if not (out / "config.json").exists():
            raise CheckpointError(f"--resume: {out} holds no run; start one there without --resume")
        (out / "metrics.jsonl").unlink(missing_ok=True)      # records of steps no checkpoint kept
        return False
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume or "
                          "replace it with --overwrite")
    if held:
        for f in out.iterdir():
            if f.name in RUN_FILES or f.name.startswith("last"):
                f.unlink()
    return False


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
    out = Path(out)
    rank, world, device = distributed.init_from_env(device)
    main = rank == 0
    if not main:
        log, progress = (lambda *_: None), False
    warn = warnings.warn if main else (lambda *_, **__: None)
    meta = None
    if main:
        resume = prepare_run_folder(out, resume, overwrite)
    if world > 1:       # every process learns whether there is a checkpoint to resume from
        resume = distributed.all_ok(resume if main else True, device)
    if resume:
        _, meta = read_checkpoint(out / "last", tensors=False)
        if meta.get("kind") != task.name:
            raise CheckpointError(f"--resume: {out / 'last'} is a {meta.get('kind')!r} run, not {task.name!r}")
        check_run_record(meta, out / "last")
        task.cfg = resolve_config(task.cfg, meta["train_config"], changed)
    cfg = task.cfg
    cfg.validate()
    distributed.check_batch_split(cfg.batch_size, world)
    amp, amp_reason = resolve_amp(cfg.amp, device)
    amp_context(amp, device)
    if cfg.amp == "auto":
        log(f"--amp auto: {'bf16 autocast' if amp == 'bf16' else 'float32'} ({amp_reason})")
    out.mkdir(parents=True, exist_ok=True)
    task.device, task.rank, task.world, task.log = device, rank, world, log
    task.setup()

    torch.manual_seed(cfg.seed)
    model = task.model = task.build_model().to(device)
    optimizer = make_optimizer(task.parameters(), cfg)
    task.optimizer = optimizer             # tasks read the rate in use (current_lr) for their records
    task.after_build(optimizer)
    epoch = step_in_epoch = global_step = 0
    elapsed, history = 0.0, []
    counters = {"skipped_steps": 0, "restored": 0, **task.counters}
    if resume:
        tensors, meta = read_checkpoint(out / "last")
        load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, out / "last")
        model.to(device)
        load_optimizer_state(optimizer, tensors, meta, out / "last")
        p = meta["progress"]
        global_step, elapsed = p["global_step"], p["elapsed_s"]
        # the position from the step count: a run resumed with more steps per epoch (a longer grow run)
        # continues inside its last epoch
        epoch, step_in_epoch = divmod(global_step, task.steps_per_epoch())
        history, counters = meta["history"], {**counters, **meta["counters"]}
        task.load_state({k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("task.")},
                        meta.get("task_state", {}))
        if main:
            _trim_metrics(out / "metrics.jsonl", global_step)
        log(f"resuming {out} at epoch {epoch + 1}, step {step_in_epoch} ({elapsed:.0f}s trained)")
    task.counters = counters
    nparams = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if main:
        run = {"task": task.name, "model": getattr(getattr(model, "config", None), "to_dict", dict)(),
               "train": asdict(cfg), "amp_resolved": amp, "amp_reason": amp_reason, "world_size": world}
        atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1) + "\n"))
    net = task.loss_module()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device] if device.startswith("cuda") else None,
                                      find_unused_parameters=task.find_unused_parameters)
    steps_per_epoch = task.steps_per_epoch()
    good_state, bad_run, snapshot_due = copy.deepcopy(model.state_dict()), 0, False
    every = task.checkpoint_interval()
    captured, use_graph = None, True

    def checkpoint():
        if not main:
            return
        task_tensors, task_meta = task.state()
        save_checkpoint(out / "last", model, optimizer, {
            "kind": task.name, "train_config": asdict(cfg), "parameters": nparams, "history": history,
            "counters": counters, "task_state": task_meta,
            "progress": {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                         "elapsed_s": elapsed}},
            extra_tensors={f"task.{k}": v for k, v in task_tensors.items()}, content_addressed=True)

    def out_of_time():
        return cfg.time_budget > 0 and elapsed >= cfg.time_budget

    t_mark = time.time()
    dirty = False
    stop = _DeferredInterrupt()
    try:
        stop.__enter__()
        while epoch < cfg.epochs and not out_of_time():
            model.train()
            bar = tqdm(range(step_in_epoch, steps_per_epoch), desc=task.bar_label(epoch), initial=step_in_epoch,
                       total=steps_per_epoch, dynamic_ncols=True, mininterval=1.0, disable=not progress)
            for b in bar:
                batch = task.batch(epoch, b, global_step)
                frac = (epoch + b / steps_per_epoch) / cfg.epochs
                if cfg.time_budget > 0:
                    frac = max(frac, elapsed / cfg.time_budget)
                lr = lr_at(cfg, global_step, frac)
                for g in optimizer.param_groups:
                    if torch.is_tensor(g["lr"]):      # a captured Adam step reads it from the device
                        g["lr"].fill_(lr)
                    else:
                        g["lr"] = lr
                full = batch.size == cfg.batch_size
                if use_graph and captured is None and full:
                    captured = task.capture(optimizer, batch)
                    use_graph = captured is not None
                applied = False
                if captured is not None and full:
                    # forward, backward and optimiser step in one replay (a ragged last batch runs eagerly)
                    dirty = True      # until the step's bookkeeping is done, weights and step count disagree
                    loss, step_out, ok = captured(batch)
                    applied = True
                    weights_ok = ok
                else:
                    with amp_context(amp, device):
                        loss, step_out = net(batch)
                    optimizer.zero_grad(set_to_none=True)
                    ok = distributed.all_ok(bool(torch.isfinite(loss)), device)
                    if ok:
                        # each process's loss is a mean over its share; weighted by that share, DDP's
                        # average of the gradients is the gradient of the global batch's mean
                        share = batch.local * world / batch.size
                        (loss * share if share != 1 else loss).backward()
                        grads = [p.grad for p in model.parameters() if p.grad is not None]
                        ok = distributed.all_ok(all_finite(grads), device)
                    if ok:
                        dirty = True  # until the step's bookkeeping is done, weights and step count disagree
                        task.prepare_gradients()
                        optimizer.step()
                        after = getattr(getattr(model, "rule", None), "after_step", None)
                        if after is not None:
                            after()
                        applied = True
                    weights_ok = not applied or distributed.all_ok(all_finite(model.parameters()), device)
                reason = None if weights_ok else "non-finite weights"
                task_reason, healthy = task.check_step(batch, step_out, applied)
                if applied and reason is None:
                    reason = task_reason
                if reason:
                    # the step itself made the weights unusable: go back to the last good ones
                    if captured is not None:
                        captured.restore(good_state)
                    else:
                        model.load_state_dict(good_state)
                        optimizer.state.clear()
                    counters["restored"] += 1
                    warn(f"step {global_step}: {reason}; restored the last good weights and reset the "
                         "optimizer's moments")
                    ok = False
                if not ok:
                    counters["skipped_steps"] += 1
                    bad_run += 1
                    if counters["skipped_steps"] <= 5 or counters["skipped_steps"] % 100 == 0:
                        warn(f"step {global_step} (epoch {epoch + 1}, batch {b}) skipped: non-finite loss or "
                             f"gradient, or undone ({counters['skipped_steps']} so far)")
                    if bad_run >= cfg.max_bad_steps:
                        raise FloatingPointError(f"{bad_run} consecutive bad steps; stopping. The last good "
                                                 f"checkpoint is in {out}")
                else:
                    bad_run = 0
                    snapshot_due |= global_step % 50 == 0
                    if snapshot_due and healthy:
                        good_state, snapshot_due = copy.deepcopy(model.state_dict()), False
                task.after_step(batch, step_out, ok, global_step)
                fault_point("step", Path(str(global_step)))
                global_step += 1
                step_in_epoch = b + 1
                dirty = False
                if stop.requested:          # Ctrl-C, taken here where the step is complete
                    raise KeyboardInterrupt
                now = time.time()
                elapsed, t_mark = elapsed + now - t_mark, now
                if world > 1 and cfg.time_budget:   # one clock: every process stops at the same step
                    elapsed = distributed.agree_max(elapsed, device)
                rec = task.on_step_end(global_step)
                if rec is not None and main:
                    _append(out / "metrics.jsonl", {"global_step": global_step, **rec})
                if b % 10 == 0 or b == steps_per_epoch - 1:
                    bar.set_postfix(task.postfix(), refresh=False)
                if every and global_step % every == 0 and step_in_epoch < steps_per_epoch:
                    checkpoint()
                    distributed.barrier()
                if out_of_time():
                    break
            bar.close()
            epoch_done = step_in_epoch >= steps_per_epoch
            if main:                 # the main process evaluates and writes; the others wait for it
                done = epoch + (1 if epoch_done else step_in_epoch / steps_per_epoch)
                rec = task.end_epoch(done, global_step, elapsed)
                if rec is not None:
                    rec = {**rec, "global_step": global_step}
                    history.append(rec)
                    _append(out / "metrics.jsonl", rec)
            if epoch_done:
                epoch, step_in_epoch = epoch + 1, 0
                good_state = copy.deepcopy(model.state_dict())
            checkpoint()
            distributed.barrier()
            t_mark = time.time()          # evaluation time (and waiting for it) is not training time
    except KeyboardInterrupt:
        if dirty:             # a second Ctrl-C in the middle of an update: keep the last complete checkpoint
            log(f"interrupted in the middle of a step: the last checkpoint in {out} is kept; continue with --resume")
        else:
            checkpoint()
            log(f"interrupted: checkpoint saved to {out / 'last'}; continue with --resume")
        raise
    finally:
        stop.__exit__()
    return {"out": str(out), "parameters": nparams, "history": history, "model": model, "counters": counters,
            "global_step": global_step, "elapsed_s": elapsed}
