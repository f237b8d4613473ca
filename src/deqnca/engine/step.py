"""One optimiser step with its guards: forward and loss under autocast (DDP-wrapped under torchrun),
backward, the non-finite checks, the task's gradient preparation, the optimiser step, the model's
`after_update`, the task's own check, and the restore of the last good weights when a step broke them.
A captured CUDA-graph step, where the task offers one, replaces the eager step for full batches."""
from __future__ import annotations

import copy

import torch

from deqnca.core.amp import amp_context
from deqnca.core.model import CellularModel
from deqnca.engine import distributed
from deqnca.engine.checkpoint import all_finite
from deqnca.engine.run import Run
from deqnca.engine.task import Batch, Task

SNAPSHOT_EVERY = 50          # steps between snapshots of the good weights (a deep copy of the state)


class TaskLoss(torch.nn.Module):
    """The task's model and loss as one module, so DistributedDataParallel can wrap the forward pass."""

    def __init__(self, task: Task):
        super().__init__()
        self.model = task.model
        self._task = [task]          # not a submodule

    def forward(self, batch):
        return self._task[0].loss(batch)


class GuardedStep:
    """Takes the steps of `run` for `task` with `optimizer`; call it with a batch.

    A step with a non-finite loss or gradient is skipped; weights that a step made non-finite (or that the
    task's `check_step` rejects) are replaced by the last good weights, the optimiser's moments reset;
    `max_bad_steps` consecutive bad steps stop the run. The good weights are snapshotted every
    `SNAPSHOT_EVERY` steps, at the next step whose weights the task calls healthy.
    """

    def __init__(self, task: Task, optimizer, run: Run, amp: str, warn, where):
        self.task, self.model, self.optimizer, self.run = task, task.model, optimizer, run
        self.cfg, self.device, self.world, self.amp, self.warn, self.where = \
            task.cfg, task.device, task.world, amp, warn, where
        self.net = TaskLoss(task)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.net, device_ids=[self.device] if str(self.device).startswith("cuda") else None,
                find_unused_parameters=task.find_unused_parameters)
        self.captured, self.try_capture = None, True
        run.good_weights = copy.deepcopy(self.model.state_dict())     # after DDP has synchronised the weights

    def set_lr(self, lr: float) -> None:
        """The step's learning rate, into the optimiser and the task (`task.lr`, for its records)."""
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):      # a captured Adam step reads it from the device
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self.task.lr = lr

    def __call__(self, batch: Batch) -> tuple[bool, object]:
        """Take one step on `batch`: (whether it was applied and kept, the task's `out` of its loss)."""
        if self._graphed(batch):
            # forward, backward and optimiser step in one replay (a ragged last batch runs eagerly)
            self.run.updating = True
            _, out, ok = self.captured(batch)
            applied, weights_ok = True, ok
        else:
            applied, ok, out = self._eager(batch)
            weights_ok = not applied or distributed.all_ok(all_finite(self.model.parameters()), self.device)
        reason = None if weights_ok else "non-finite weights"
        task_reason, healthy = self.task.check_step(batch, out, applied)
        if applied and reason is None:
            reason = task_reason
        if reason:
            self._restore(reason)
            ok = False
        self._count(ok, healthy)
        return ok, out

    def _graphed(self, batch: Batch) -> bool:
        full = batch.size == self.cfg.batch_size
        if self.try_capture and self.captured is None and full:
            self.captured = self.task.capture(self.optimizer, batch)
            self.try_capture = self.captured is not None
        return self.captured is not None and full

    def _eager(self, batch: Batch) -> tuple[bool, bool, object]:
        """(applied, ok, out): forward, backward, and the update if loss and gradients are finite everywhere."""
        with amp_context(self.amp, self.device):
            loss, out = self.net(batch)
        self.optimizer.zero_grad(set_to_none=True)
        ok = distributed.all_ok(bool(torch.isfinite(loss)), self.device)
        if ok:
            # each process's loss is a mean over its share; weighted by that share, DDP's average of the
            # gradients is the gradient of the global batch's mean
            share = batch.local * self.world / batch.size
            (loss * share if share != 1 else loss).backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            ok = distributed.all_ok(all_finite(grads), self.device)
        if not ok:
            return False, False, out
        self.run.updating = True          # until the step is counted, weights and step count disagree
        self.task.prepare_gradients()
        self.optimizer.step()
        if isinstance(self.model, CellularModel):
            self.model.after_update()
        return True, True, out

    def _restore(self, reason: str) -> None:
        """The step made the weights unusable: back to the last good ones, the optimiser's moments reset."""
        if self.captured is not None:
            self.captured.restore(self.run.good_weights)
        else:
            self.model.load_state_dict(self.run.good_weights)
            self.optimizer.state.clear()
        self.run.counters["restored"] += 1
        self.warn(f"step {self.run.global_step}: {reason}; restored the last good weights and reset the "
                  "optimizer's moments")

    def _count(self, ok: bool, healthy: bool) -> None:
        run, counters = self.run, self.run.counters
        if ok:
            run.bad_steps = 0
            run.snapshot_due |= run.global_step % SNAPSHOT_EVERY == 0
            if run.snapshot_due and healthy:
                run.good_weights, run.snapshot_due = copy.deepcopy(self.model.state_dict()), False
            return
        counters["skipped_steps"] += 1
        run.bad_steps += 1
        if counters["skipped_steps"] <= 5 or counters["skipped_steps"] % 100 == 0:
            self.warn(f"step {run.global_step} (epoch {run.epoch + 1}, batch {run.step_in_epoch}) skipped: "
                      f"non-finite loss or gradient, or undone ({counters['skipped_steps']} so far)")
        if run.bad_steps >= self.cfg.max_bad_steps:
            raise FloatingPointError(f"{run.bad_steps} consecutive bad steps; stopping. The last good "
                                     f"checkpoint is in {self.where}")
