"""Growing NCA (Mordvintsev et al. 2020), trained by BPTT or as an equilibrium, as a task.

The paper's recipe: a pool of 1024 states, batches of 8, Adam 2e-3 -> 2e-4 at step 2000, per-parameter
gradient normalisation. Variants: growing (every batch from the seed), persistent (batch drawn from the
pool, its highest-loss samples replaced by the seed, results written back), regenerating (persistent +
the lowest-loss samples damaged). A batch that mostly diverged or died out (no live cell: a state no
gradient can leave) is undone like a non-finite step, and such samples go back to the seed in the pool.
Under torchrun every process builds the same global batch from its identical pool and trains its rows.
"""
from __future__ import annotations

import torch

from deqnca.engine import distributed
from deqnca.engine.trainer import TASKS, Batch, Task
from deqnca.tasks.grow.config import _EQUILIBRIUM_KEYS, PRESETS, VARIANTS, GrowConfig  # noqa: F401  (re-exported)
from deqnca.tasks.grow.model import (
    GrowModel,
    StepOutput,
    disc_masks,
    make_forward,
    normalise_gradients,
    spectral_radius,
)
from deqnca.tasks.grow.rule import GrowingConfig, target_loss
from deqnca.tasks.grow.targets import target_record


def train(cfg: GrowConfig, target: torch.Tensor, out, device: str = "cpu", resume: bool = False, log=print,
          progress: bool = True, **fit_kw) -> dict:
    """Grow `target` through the engine; the summary of `fit` with "step" (optimizer steps taken).

    Examples:
        >>> train(GrowConfig(target="small", steps=10), load_target("small"), "runs/try")  # doctest: +SKIP
    """
    from deqnca.engine.trainer import fit

    r = fit(GrowTask(cfg, target), out, device=device, resume=resume, log=log, progress=progress, **fit_kw)
    return {**r, "step": r["global_step"]}


@TASKS.register("grow")
class GrowTask(Task):
    """Grow `target` (C, H, W) from one seed cell; `cfg` a `GrowConfig`."""

    name = "grow"
    Config = GrowConfig
    presets = PRESETS

    def __init__(self, cfg: GrowConfig, target: torch.Tensor):
        super().__init__(cfg)
        self.target = target
        self.counters = {"divergences": 0, "extinctions": 0}

    def setup(self):
        c = self.cfg
        if not 0 <= c.seeds <= c.batch_size - (c.damaged if c.variant == "regenerating" else 0):
            raise ValueError(f"--seeds {c.seeds}: need 0..batch size minus the damaged samples")
        if not 1 <= c.min_steps <= c.max_steps:
            raise ValueError(f"rollout steps {c.min_steps}..{c.max_steps}: need 1 <= min <= max")
        self.data_record = target_record(c.target, c.pad, self.target)

    def build_model(self):
        c = self.cfg
        model = GrowModel(GrowingConfig.from_dict(c.rule or {}), self.target).to(self.device)
        rule = model.rule
        self.forward = make_forward(c.trainer, **{k: getattr(c, k) for k in _EQUILIBRIUM_KEYS})
        H, W = self.target.shape[1:]
        self.seed_state = rule.seed(1, H, W, device=self.device)
        self.pool = self.seed_state.expand(c.pool_size, -1, -1, -1).clone() if c.variant != "growing" else None
        self.state_tensors = {"pool": self.pool} if self.pool is not None else {}
        self.shard = distributed.Shard(self.rank, self.world, c.batch_size) if self.world > 1 else None
        self.spectral = None
        if c.init_from:
            from deqnca.tasks import load

            source, meta = load(c.init_from, kind="grow")
            if source.rule.config != rule.config or source.target.shape != model.target.shape:
                raise ValueError(f"--init-from {c.init_from}: its rule or target size differs from this run's; "
                                 "start from a checkpoint trained on the same target and rule")
            rule.load_state_dict(source.rule.state_dict())
        rule.alive_surrogate = c.alive_surrogate
        return model

    def steps_per_epoch(self):
        return self.cfg.steps

    def batch(self, epoch, index, global_step):
        c = self.cfg
        # generators seeded per step: a resumed run draws exactly what it would have drawn
        host_gen = torch.Generator().manual_seed(c.seed * 1_000_003 + global_step)
        self.gen = torch.Generator(device=self.device).manual_seed(c.seed * 1_000_003 + global_step)
        steps = int(torch.randint(c.min_steps, c.max_steps + 1, (1,), generator=host_gen))
        idx = None
        if self.pool is None:
            z0 = self.seed_state.expand(c.batch_size, -1, -1, -1).clone()
        else:
            idx = torch.randperm(c.pool_size, generator=host_gen)[:c.batch_size].to(self.device)
            z0 = self.pool[idx]
            order = target_loss(z0, self.model.target[None]).argsort(descending=True)
            idx, z0 = idx[order], z0[order]
            z0[:c.seeds] = self.seed_state
            if c.variant == "regenerating" and c.damaged:
                H, W = self.target.shape[1:]
                z0[-c.damaged:] *= disc_masks(c.damaged, H, W, self.gen, self.device)
        local = z0 if self.shard is None else self.shard.take(z0)
        return Batch((local, steps, idx), len(local), c.batch_size, index)

    def loss(self, batch):
        z0, steps, _ = batch.data
        return self.forward(self.model.rule, z0, self.model.target[None], steps, self.gen, self.shard)

    def prepare_gradients(self):
        normalise_gradients(self.model.rule.parameters())      # the paper's: every update has unit direction

    def check_step(self, batch, out: StepOutput, applied):
        self.out = out = _gather(out, self.world)          # from here on: the global batch, on every process
        reason, self.diverged = None, None
        if "rel_residual" in out.extra:
            rel = out.extra["rel_residual"]
            self.diverged = (rel > self.cfg.divergence_rel) | ~torch.isfinite(rel)
            self.counters["divergences"] += int(self.diverged.sum())
            if self.diverged.float().mean() > self.cfg.restore_fraction:
                reason = f"{int(self.diverged.sum())}/{len(rel)} solves diverged"
        # extinction: no live cell left, a state no later step can bring back
        self.extinct = ~self.model.rule.alive(out.final).flatten(1).any(1)
        n = int(self.extinct.sum())
        self.counters["extinctions"] += n
        if reason is None and n > self.cfg.restore_fraction * len(self.extinct):
            reason = f"{n}/{len(self.extinct)} patterns died out"
        return reason, n == 0          # a rule that lets a pattern die is not kept as "good"

    def after_step(self, batch, out, ok, step):
        c, out, idx = self.cfg, self.out, batch.data[2]
        if ok:
            self.meter.add("loss", out.loss)          # kept on the device until a record reads it
        if self.pool is not None:
            keep = torch.isfinite(out.final).flatten(1).all(1) & ~self.extinct
            if self.diverged is not None:
                keep &= ~self.diverged
            self.pool[idx] = torch.where(keep[:, None, None, None], out.final, self.seed_state)   # dead: reseed
        # measured after the first step of each period, recorded with the next record
        if self.rank == 0 and c.trainer == "implicit" and c.spectral_every and (step - 1) % c.spectral_every == 0:
            self.spectral = spectral_radius(self.model.rule.expected_map(), out.final[:1], generator=self.gen)
        if not ((c.log_every and step % c.log_every == 0) or step == c.steps):
            return None
        rec = {"step": step, "loss": self.meter.mean("loss"), "lr": self.lr, **self.counters}
        if "rel_residual" in out.extra:
            rec.update(rel_residual=out.extra["rel_residual"].mean().item(),
                       residual_mse=out.extra["residual_mse"].item(), solver_steps=out.extra["solver_steps"])
            rec.update({k: out.extra[k].item() for k in ("jac_frobenius", "spectral_estimate") if k in out.extra})
            if self.spectral is not None:
                rec["spectral_radius"], self.spectral = self.spectral.max().item(), None
        self.meter.reset()
        return rec


def _gather(out: StepOutput, world: int) -> StepOutput:
    """One process's StepOutput -> the global batch's (identical on every process)."""
    if world <= 1:
        return out
    per_sample = distributed.gather_rows(out.per_sample, world)
    extra = dict(out.extra)
    if "rel_residual" in extra:
        extra["rel_residual"] = distributed.gather_rows(extra["rel_residual"], world)
    for k in ("residual_mse", "jac_frobenius"):          # means over equal slices: mean of the means
        if k in extra:
            extra[k] = distributed.all_sum(extra[k]) / world
    if "spectral_estimate" in extra:
        extra["spectral_estimate"] = torch.tensor(distributed.agree_max(extra["spectral_estimate"], per_sample.device))
    if "solver_steps" in extra:                          # the slowest slice sets the batch's count
        extra["solver_steps"] = int(distributed.agree_max(extra["solver_steps"], per_sample.device))
    return StepOutput(distributed.gather_rows(out.final, world), per_sample.mean(), per_sample, extra)
