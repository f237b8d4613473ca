"""Self-classifying MNIST digits (Randazzo et al., Distill 2020) as a task: two models, one engine.

- `--model article`: the article's rule (rule_article.py) trained by BPTT with its notebook's recipe:
  20 steps per batch of 16, the L2 loss on one-hot labels, per-parameter gradient normalisation, Adam
  1e-3 (×0.1 at step 30,000; the notebook drops ×0.1 again at 70,000), a pool of 160 states: per batch
  4 samples restart from a new digit and 4 get a new digit with their state kept where it is alive
  ("mutation"); the batch's final states go back to the pool.
- `--model equilibrium`: the contraction (rule_equilibrium.py) solved to a tolerance from zero
  by a registered solver and differentiated implicitly (IFT) or by the phantom gradient, with a per-cell
  loss on fresh digits (its fixed point does not depend on the start, so a pool has nothing to carry).

Every `eval_every` steps and at the end, the held-out digits are rolled out to the marks and scored
(model.py: cell accuracy, total agreement, residual) into metrics.jsonl.
"""
from __future__ import annotations

import torch

from deqnca.core.gradients import make_gradient
from deqnca.core.solvers import get_solver
from deqnca.data.provenance import tensors_record
from deqnca.engine.trainer import TASKS, Batch, Task
from deqnca.tasks.cells.config import PRESETS, CellsConfig  # noqa: F401  (re-exported)
from deqnca.tasks.cells.model import (
    LOSSES,
    MODEL_RULES,
    CellsModel,
    alive_mask,
    count,
    evaluate,
    resize_digits,
    solve_equilibrium,
    truth_map,
)
from deqnca.tasks.grow.model import normalise_gradients


def load_cells_checkpoint(path, device="cpu"):
    """(CellsModel, meta): `deqnca.load(path, device, kind="cells")` (kept for the figures' callers)."""
    from deqnca.tasks import load

    return load(path, device, kind="cells")


def load_digits(size: int, train_images: int = 0, eval_images: int = 0):
    """(x, y, x_test, y_test): MNIST at `size`, the first `train_images` (0: all) and `eval_images`."""
    return load_digits_and_record(size, train_images, eval_images)[0]


def load_digits_and_record(size: int, train_images: int = 0, eval_images: int = 0):
    """((x, y, x_test, y_test) as `load_digits` gives them, the record of the MNIST files they come from)."""
    from deqnca.data.provenance import idx_data

    (x, y, xt, yt), record = idx_data()
    x, y = (x[:train_images], y[:train_images]) if train_images else (x, y)
    return (resize_digits(x, size), y, resize_digits(xt[:eval_images or len(xt)], size),
            yt[:eval_images or len(xt)]), record


def _equilibrium_step(task, x):
    c, rule = task.cfg, task.model.rule
    z, stats = solve_equilibrium(rule, x, task.solve, task.strategy, max_iter=c.solver_iter, tol=c.solver_tol)
    return z, {"rel_residual": stats.rel_residual.mean().item(), "solver_steps": stats.nstep}


def _eval_record(task) -> dict:
    c, model = task.cfg, task.model
    was = model.training
    model.eval()
    x, truth = task.eval_x.to(task.device), truth_map(task.eval_x, task.eval_y).to(task.device)
    r = evaluate(model, x, truth, marks=tuple(c.eval_marks), batch_size=128, seed=c.seed)
    model.train(was)
    rec = {f"eval_{k}@{m}": v for m, row in r["at"].items() for k, v in row.items() if k != "digit_accuracy"}
    rec.update({f"eval_top_{k}": v["value"] for k, v in r["top"].items()})
    return {**rec, **{f"eval_top_{k}_step": v["step"] for k, v in r["top"].items()}}


def _init_from(model, source_path):
    """Copy the weights of checkpoint `source_path` into `model`: the same rule, its settings (say, the flood's
    `confirm`) free to differ, every parameter the same shape."""
    from deqnca.tasks import load

    source, _ = load(source_path, kind="cells")
    if source.config.rule != model.config.rule:
        raise ValueError(f"--init-from {source_path}: its rule is {source.config.rule!r}, this run's "
                         f"{model.config.rule!r}; start from a checkpoint of the same --model")
    theirs, ours = source.rule.state_dict(), model.rule.state_dict()
    if {k: v.shape for k, v in theirs.items()} != {k: v.shape for k, v in ours.items()}:
        raise ValueError(f"--init-from {source_path}: its parameters differ in shape from this run's "
                         "(another rule width); start from a checkpoint with the same rule settings")
    model.rule.load_state_dict(theirs)


@TASKS.register("cells")
class CellsTask(Task):
    """Train a self-classifying CA; `data` = (x, y, x_test, y_test) 28×28 digits (None: the vendored MNIST)."""

    name = "cells"
    Config = CellsConfig
    presets = PRESETS

    def __init__(self, cfg: CellsConfig, data=None):
        super().__init__(cfg)
        self.data = data

    def setup(self):
        c = self.cfg
        if self.world > 1:
            raise ValueError("the cells task trains in one process; run it without torchrun")
        if c.model == "article" and c.pool_size and c.fresh + c.mutate > c.batch_size:
            raise ValueError(f"--fresh {c.fresh} + --mutate {c.mutate}: more than the batch of {c.batch_size}")
        if self.data is None:
            (x, y, xt, yt), self.data_record = load_digits_and_record(28, c.train_images, c.eval_images)
        else:
            (x, y, xt, yt), self.data_record = self.data, tensors_record(*self.data)
        n = c.train_images or len(x)
        self.x, self.y = resize_digits(x[:n], c.size).to(self.device), y[:n].to(self.device)
        self.eval_x, self.eval_y = resize_digits(xt[:c.eval_images], c.size), yt[:c.eval_images]

    def build_model(self):
        c = self.cfg
        model = CellsModel({"rule": MODEL_RULES[c.model], "rule_kw": c.rule}).to(self.device)
        self.pool, self.extra = None, {}
        if c.model != "article":
            kw = {"b_max_iter": c.b_max_iter, "b_tol": c.b_tol} if c.gradient == "implicit" else {"k": c.phantom_k}
            self.strategy, self.solve = make_gradient(c.gradient, **kw), get_solver(c.solver)
        elif c.pool_size:
            g = torch.Generator().manual_seed(c.seed)
            self.pool = {"z": model.rule.initial_state(self.x[:1]).expand(c.pool_size, -1, -1, -1).clone(),
                         "img": torch.randint(len(self.x), (c.pool_size,), generator=g).to(self.device)}
            self.state_tensors = {f"pool_{k}": v for k, v in self.pool.items()}
        if c.init_from:
            _init_from(model, c.init_from)
        return model

    def steps_per_epoch(self):
        return self.cfg.steps

    def batch(self, epoch, index, global_step):
        c, n = self.cfg, len(self.x)
        host = torch.Generator().manual_seed(c.seed * 1_000_003 + global_step)   # exact resume
        self.gen = torch.Generator(device=self.device).manual_seed(c.seed * 1_000_003 + global_step)
        if self.pool is None:
            img = torch.randint(n, (c.batch_size,), generator=host).to(self.device)
            return Batch((None, img, None), c.batch_size, c.batch_size, index)
        idx = torch.randperm(c.pool_size, generator=host)[:c.batch_size].to(self.device)
        z0, img = self.pool["z"][idx].clone(), self.pool["img"][idx].clone()
        new = torch.randint(n, (c.fresh + c.mutate,), generator=host).to(self.device)
        if c.fresh:
            img[:c.fresh], z0[:c.fresh] = new[:c.fresh], 0.0
        if c.mutate:       # the article's mutation: a new digit, the state kept where the new digit is alive
            img[-c.mutate:] = new[c.fresh:]
            z0[-c.mutate:] *= alive_mask(self.x[new[c.fresh:]]).unsqueeze(1)
        return Batch((z0, img, idx), c.batch_size, c.batch_size, index)

    def loss(self, batch):
        c, rule = self.cfg, self.model.rule
        z0, img, _ = batch.data
        x, truth = self.x[img], truth_map(self.x[img], self.y[img])
        if c.model != "article":
            z, self.extra = _equilibrium_step(self, x)
        else:
            z = self.model.rollout(x, c.rollout_steps, self.gen, z0)
        logits = rule.logits(z)
        per_sample = LOSSES[c.loss](logits, truth)
        loss = per_sample.mean()
        return loss, (z.detach(), count(logits.detach(), truth), loss.detach())

    def prepare_gradients(self):
        if self.cfg.normalise_gradients:
            normalise_gradients(self.model.parameters())     # the article's: every update has unit direction
        else:
            super().prepare_gradients()

    def after_step(self, batch, out, ok, step):
        c, (z, counts, loss) = self.cfg, out
        if ok:
            # the engine has called it already; the second call is kept so that runs stay as they were
            self.model.after_update()
            self.meter.add("loss", loss.item())
            self.meter.add("accuracy", counts["correct"], counts["cells"])
        if self.pool is not None:
            _, img, idx = batch.data
            good = torch.isfinite(z).flatten(1).all(1)[:, None, None, None]
            self.pool["z"][idx] = torch.where(good, z, torch.zeros_like(z))
            self.pool["img"][idx] = img
        rec = None
        if (c.log_every and step % c.log_every == 0) or step == c.steps:
            rec = {"step": step, "loss": self.meter.mean("loss"), "lr": self.lr,
                   "train_accuracy": self.meter.mean("accuracy", 0.0), **self.extra}
            self.meter.reset()
        if c.eval_every and step % c.eval_every == 0 and step < c.steps:
            rec = {**(rec or {"step": step}), **_eval_record(self)}
        return rec

    def end_epoch(self, epoch, global_step, elapsed):
        rec = {"epoch": epoch, "steps": global_step, "elapsed_s": elapsed, **_eval_record(self)}
        self.log(f"cells {self.cfg.model} step {global_step}: cell accuracy "
                 f"{rec[f'eval_accuracy@{max(self.cfg.eval_marks)}']:.3f} at step {max(self.cfg.eval_marks)}")
        return rec
