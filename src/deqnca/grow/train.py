"""The growing-NCA training loop, shared by both trainers (they differ only in the forward pass).

The paper's recipe: a pool of 1024 states, batches of 8, Adam 2e-3 → 2e-4 at step 2000,
per-parameter gradient normalisation; variants
  growing       every batch starts from the seed (no pool)
  persistent    batch drawn from the pool, its highest-loss sample replaced by the seed, results
                written back
  regenerating  persistent + the 3 lowest-loss samples damaged (a random disc erased)

Conventions of train/loop.py: tqdm progress, metrics.jsonl, atomic checkpoint `last` every ~steps/10
and at the end and on Ctrl-C, exact --resume (per-step random generators, the pool saved beside the
checkpoint), non-finite loss/gradient skipped and counted, non-finite weights restored from the last
good state, never saved; a batch that mostly diverged or died out (no live cell: a state no gradient
can leave) is undone the same way, and such samples go back to the seed in the pool.

Several GPUs: `torchrun --nproc_per_node N -m deqnca.cli grow train --device cuda ...` (N must divide
the batch size). Every process builds the same global batch from its identical pool, trains on rows
[rank::N] with DistributedDataParallel (fire masks drawn for the global batch, then sliced), gathers
the final states and writes the global batch back into its pool, so N processes train what one
process trains; rank 0 alone logs and writes the checkpoint and the pool.
"""
from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..rules.growing import GrowingConfig, GrowingNCARule, target_loss
from ..train import distributed
from ..train.checkpoint import all_finite, atomic_write, load_optimizer_state, read_checkpoint, save_checkpoint
from .objective import GrowObjective, StepOutput, disc_masks, make_forward, spectral_radius, training_step

CHECKPOINT_KIND = "grow"
VARIANTS = ("growing", "persistent", "regenerating")


@dataclass
class GrowTrainConfig:
    trainer: str = "bptt"             # "bptt" or "implicit"
    variant: str = "persistent"
    target: str = "lizard"            # lizard, small or an image path
    pad: int = 0                      # transparent cells added around a target image
    steps: int = 8000                 # optimizer steps
    time_budget: float = 0.0          # seconds of training; 0 = no limit
    batch_size: int = 8
    pool_size: int = 1024
    min_steps: int = 64               # rollout length drawn per batch in [min_steps, max_steps]:
    max_steps: int = 96               # BPTT's horizon / the growth steps before the solver
    lr: float = 2e-3
    lr_decay_at: int = 2000
    lr_decay: float = 0.1
    damaged: int = 3                  # regenerating: lowest-loss samples damaged per batch
    seeds: int = 1                    # pool variants: highest-loss samples replaced by the seed per batch
    seed: int = 0
    init_from: str = ""               # start from this grow checkpoint's rule weights (fresh optimizer and
                                      # pool): stages a curriculum, e.g. growing, then persistent
    # equilibrium trainer
    # Picard steps without early stopping: the trained rule's relative residual stays at ~1e-2, above
    # any useful tolerance, so fixed_point's per-iteration convergence check (a host sync each step)
    # bought nothing and made the GPU step 7x slower than BPTT's; Anderson extrapolates the
    # non-contractive early rule to blow-up
    solver: str = "rollout"
    solver_iter: int = 32
    solver_tol: float = 1e-3
    # phantom, not implicit: at the grown pattern the Jacobian's spectral radius sits at ~1 (measured
    # 0.999-1.007), so the IFT adjoint system (I - J^T) is near-singular and its backward iteration
    # amplifies; with "implicit" the lizard run blew up after ~90 steps on the H200 and the small target
    # on CPU at lr 2e-3 and 5e-4 alike, while phantom(k=8) trained stably (docs/grow.md)
    gradient: str = "phantom"         # or "implicit"
    b_solver: str = "fixed_point"
    b_max_iter: int = 32
    b_tol: float = 1e-4
    phantom_k: int = 8                # unrolled steps of the phantom gradient
    phantom_map: str = "expected"     # what the solver and phantom steps iterate: expected or stochastic map
    residual_weight: float = 1.0
    jac_weight: float = 0.0
    restart_noise: float = 0.0        # phantom steps start from z* + noise on live cells: trains attraction
    spectral_weight: float = 0.0      # hinge penalty on the spectral radius of ∂f/∂z at z* above spectral_target
    spectral_target: float = 0.95
    alive_surrogate: float = 0.0      # τ > 0: the alive mask passes a sigmoid's gradient (rules/growing.py)
    spectral_iters: int = 8           # power iterations per step for that penalty
    divergence_rel: float = 0.1       # a solve ending above this relative residual is a divergence event
    restore_fraction: float = 0.5     # more of the batch diverging or dying out than this: restore the last
                                      # good weights
    spectral_every: int = 100         # steps between spectral-radius measurements; 0 = never
    log_every: int = 10
    checkpoint_every: int = 0         # 0 = about steps/10
    max_bad_steps: int = 50           # consecutive non-finite steps before giving up
    rule: dict | None = None          # GrowingConfig overrides (channels, hidden, fire_rate)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def equilibrium_kw(self) -> dict:
        keys = ("solver", "solver_iter", "solver_tol", "gradient", "b_solver", "b_max_iter", "b_tol", "phantom_k",
                "residual_weight", "jac_weight", "restart_noise", "spectral_weight", "spectral_target",
                "spectral_iters", "phantom_map")
        return {k: getattr(self, k) for k in keys}


# named settings of the equilibrium trainer (`grow train --recipe NAME`); explicit options override them.
# "window", the windowed phantom gradient (docs/grow.md): each visit of a pool state grows 1..16 steps
# without autograd and one solver step, then differentiates 32 steps of the stochastic rule from wherever
# the state is, so the window sees growth in young states and the fixed point in old ones; a 128-state
# pool ages every sample through both. Mid-growth states are not fixed points: no residual penalty, and
# a solve's residual is no divergence verdict (non-finite states and extinctions still are)
RECIPES = {
    "equilibrium": {},
    "window": {"min_steps": 1, "max_steps": 16, "solver_iter": 1, "phantom_k": 32, "residual_weight": 0.0,
               "pool_size": 128, "divergence_rel": 1e9, "phantom_map": "stochastic"},
}


class GrowModel(torch.nn.Module):
    """The rule plus the target it was trained on, so a checkpoint alone can be replayed and scored."""

    def __init__(self, rule_config, target: torch.Tensor):
        super().__init__()
        self.rule = GrowingNCARule(rule_config)
        self.config = self.rule.config
        self.register_buffer("target", target.clone())


def load_grow_checkpoint(path, device="cpu") -> tuple[GrowModel, dict]:
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        from ..train.checkpoint import CheckpointError

        raise CheckpointError(f"{path}: not a growing-NCA checkpoint (kind {meta.get('kind')!r}); "
                              "use a checkpoint written by `deqnca grow train`")
    model = GrowModel(GrowingConfig.from_dict(meta["model_config"]), tensors["model.target"])
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.to(device), meta


def lr_at(cfg: GrowTrainConfig, step: int) -> float:
    return cfg.lr * (cfg.lr_decay if step >= cfg.lr_decay_at else 1.0)


def _gather_output(out: StepOutput, world: int) -> StepOutput:
    """One process's StepOutput → the global batch's (identical on every process): final states,
    per-sample losses and residuals gathered in global order, batch means averaged."""
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


def train(cfg: GrowTrainConfig, target: torch.Tensor, out, device="cpu", resume=False, log=print,
          progress=True) -> dict:
    """Train, checkpointing to `out`. Under torchrun (WORLD_SIZE > 1) the rule's forward pass is wrapped
    in DistributedDataParallel and each process trains on its slice of every global batch."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
    if not 0 <= cfg.seeds <= cfg.batch_size - (cfg.damaged if cfg.variant == "regenerating" else 0):
        raise ValueError(f"--seeds {cfg.seeds}: need 0..batch size minus the damaged samples")
    if not 1 <= cfg.min_steps <= cfg.max_steps:
        raise ValueError(f"rollout steps {cfg.min_steps}..{cfg.max_steps}: need 1 <= min <= max")
    rank, world, device = distributed.init_from_env(device)
    main_rank = rank == 0
    distributed.check_batch_split(cfg.batch_size, world)
    if not main_rank:
        log, progress = (lambda *_: None), False
    warn = warnings.warn if main_rank else (lambda *_, **__: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = GrowModel(GrowingConfig.from_dict(cfg.rule or {}), target).to(device)
    rule, target = model.rule, model.target[None]
    optimizer = torch.optim.Adam(rule.parameters(), lr=cfg.lr)
    forward = make_forward(cfg.trainer, **cfg.equilibrium_kw())
    _, H, W = target.shape[1:]
    seed_state = rule.seed(1, H, W, device=device)
    pool = seed_state.expand(cfg.pool_size, -1, -1, -1).clone() if cfg.variant != "growing" else None
    step, elapsed = 0, 0.0
    counters = {"skipped_steps": 0, "restored": 0, "divergences": 0, "extinctions": 0}
    if cfg.init_from and not resume:
        source, source_meta = load_grow_checkpoint(cfg.init_from)
        if source.rule.config != rule.config or source.target.shape != model.target.shape:
            raise ValueError(f"--init-from {cfg.init_from}: its rule or target size differs from this run's; "
                             "start from a checkpoint trained on the same target and rule")
        rule.load_state_dict(source.rule.state_dict())
        log(f"starting from the weights of {cfg.init_from} ({source_meta['step']} steps)")
    if resume:
        tensors, meta = read_checkpoint(out / "last")
        if meta.get("kind") != CHECKPOINT_KIND or meta["train_config"]["trainer"] != cfg.trainer:
            raise ValueError(f"--resume: {out / 'last'} is not a {cfg.trainer} growing-NCA run")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_state(optimizer, tensors, meta)
        step, elapsed, counters = meta["step"], meta["elapsed_s"], meta["counters"]
        cfg = GrowTrainConfig.from_dict({**meta["train_config"], "steps": cfg.steps,
                                         "time_budget": cfg.time_budget})
        distributed.check_batch_split(cfg.batch_size, world)
        if pool is not None:
            pool = load_file(str(out / "pool.safetensors"))["pool"].to(device)
        log(f"resuming {out} at step {step}")
    rule.alive_surrogate = cfg.alive_surrogate          # after --resume: the run's own setting
    if main_rank:
        (out / "config.json").write_text(json.dumps({**asdict(cfg), "world_size": world}, indent=1) + "\n")
    net, shard = None, None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # the pool, the batch and every random draw are the same on all processes; each trains on
        # rows [rank::world] of the global batch (`shard`)
        shard = distributed.Shard(rank, world, cfg.batch_size)
        net = DistributedDataParallel(GrowObjective(rule, forward),
                                      device_ids=[device] if device.startswith("cuda") else None)
    every = cfg.checkpoint_every or max(1, cfg.steps // 10)
    good_state, bad_run, snapshot_due = copy.deepcopy(rule.state_dict()), 0, False
    divergences = torch.zeros((), device=device, dtype=torch.long)   # summed on device, read when logging
    window: list[torch.Tensor] = []
    spectral = None

    def checkpoint(sync=True):
        counters["divergences"] += int(divergences)
        divergences.zero_()
        if main_rank:
            if pool is not None:   # pool first: a crash between the writes leaves a newer pool, never a torn one
                atomic_write(out / "pool.safetensors", lambda tmp: save_file({"pool": pool.cpu().contiguous()}, tmp))
            save_checkpoint(out / "last", model, optimizer, {
                "kind": CHECKPOINT_KIND, "step": step, "elapsed_s": elapsed, "counters": counters,
                "train_config": asdict(cfg), "parameters": sum(p.numel() for p in rule.parameters())})
        if sync:                   # the other processes wait for rank 0's files
            distributed.barrier()

    bar = tqdm(total=cfg.steps, initial=step, desc=f"grow {cfg.trainer}", dynamic_ncols=True,
               mininterval=1.0, disable=not progress)
    t0 = time.time() - elapsed
    try:
        while step < cfg.steps and not (cfg.time_budget and elapsed >= cfg.time_budget):
            # generators seeded per step: a resumed run draws exactly what it would have drawn
            host_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            dev_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            rollout_steps = int(torch.randint(cfg.min_steps, cfg.max_steps + 1, (1,), generator=host_gen))
            if pool is None:
                idx, z0 = None, seed_state.expand(cfg.batch_size, -1, -1, -1).clone()
            else:
                idx = torch.randperm(cfg.pool_size, generator=host_gen)[:cfg.batch_size].to(device)
                z0 = pool[idx]
                order = target_loss(z0, target).argsort(descending=True)
                idx, z0 = idx[order], z0[order]
                z0[:cfg.seeds] = seed_state
                if cfg.variant == "regenerating" and cfg.damaged:
                    z0[-cfg.damaged:] *= disc_masks(cfg.damaged, H, W, dev_gen, device)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(cfg, step)
            out_step, ok = training_step(rule, forward, optimizer, z0 if shard is None else shard.take(z0),
                                         target, rollout_steps, dev_gen, shard=shard, net=net)
            out_step = _gather_output(out_step, world)      # from here on: the global batch, on every process
            restore_reason = None
            if ok and not distributed.all_ok(all_finite(rule.parameters()), device):
                restore_reason = "non-finite weights"          # the step itself blew the weights up
            if "rel_residual" in out_step.extra:
                rel = out_step.extra["rel_residual"]
                diverged = (rel > cfg.divergence_rel) | ~torch.isfinite(rel)
                divergences += diverged.sum()
                # the weights that produced this batch already make most solves blow up: going on
                # from them feeds the pool exploding states, so go back to the last good weights
                if ok and restore_reason is None and diverged.float().mean() > cfg.restore_fraction:
                    restore_reason = f"{int(diverged.sum())}/{len(rel)} solves diverged"
            # extinction: no live cell left. The alive mask zeroes every gradient of a dead state, so no
            # later step can bring it back (measured: rollouts of 64..640 steps killed two runs for good)
            extinct = ~rule.alive(out_step.final).flatten(1).any(1)
            n_extinct = int(extinct.sum())                  # one host read for the count and both decisions
            counters["extinctions"] = counters.get("extinctions", 0) + n_extinct
            if ok and restore_reason is None and n_extinct > cfg.restore_fraction * len(extinct):
                restore_reason = f"{n_extinct}/{len(extinct)} patterns died out"
            if restore_reason:
                rule.load_state_dict(good_state)
                optimizer.state.clear()
                counters["restored"] += 1
                warn(f"step {step}: {restore_reason}; restored the last good weights and reset Adam's moments")
                ok = False
            if not ok:
                counters["skipped_steps"] += 1
                bad_run += 1
                warn(f"step {step} skipped: non-finite loss/gradient or diverged solves "
                     f"({counters['skipped_steps']} so far)")
                if bad_run >= cfg.max_bad_steps:
                    raise FloatingPointError(f"{bad_run} consecutive bad steps; stopping. "
                                             f"The last good checkpoint is in {out}")
            else:
                bad_run = 0
                snapshot_due |= step % 50 == 0
                # a rule that lets a pattern die is not "good": restoring it would start the slide again
                if snapshot_due and n_extinct == 0:
                    good_state, snapshot_due = copy.deepcopy(rule.state_dict()), False
                window.append(out_step.loss)
            if pool is not None:
                final = out_step.final
                keep = torch.isfinite(final).flatten(1).all(1)
                if "rel_residual" in out_step.extra:
                    keep &= ~diverged
                keep &= ~extinct
                # a diverged or dead sample restarts from the seed
                pool[idx] = torch.where(keep[:, None, None, None], final, seed_state)
            if (main_rank and cfg.trainer == "implicit" and cfg.spectral_every
                    and step % cfg.spectral_every == 0):
                spectral = spectral_radius(rule.expected_map(), out_step.final[:1], generator=dev_gen)
            step += 1
            elapsed = time.time() - t0
            if world > 1 and cfg.time_budget:   # one clock for all: every process stops at the same step
                elapsed = distributed.agree_max(elapsed, device)
            bar.update(1)
            if main_rank and (step % cfg.log_every == 0 or step == cfg.steps):
                rec = {"step": step, "wall_s": round(elapsed, 3),
                       "loss": torch.stack(window).mean().item() if window else float("nan"),
                       "lr": lr_at(cfg, step - 1), **counters,
                       "divergences": counters["divergences"] + int(divergences)}
                if "rel_residual" in out_step.extra:
                    rec.update(rel_residual=out_step.extra["rel_residual"].mean().item(),
                               residual_mse=out_step.extra["residual_mse"].item(),
                               solver_steps=out_step.extra["solver_steps"])
                    for k in ("jac_frobenius", "spectral_estimate"):
                        if k in out_step.extra:
                            rec[k] = out_step.extra[k].item()
                    if spectral is not None:
                        rec["spectral_radius"] = spectral.max().item()
                        spectral = None
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", **({"res": f"{rec['rel_residual']:.1e}"}
                                                              if "rel_residual" in rec else {}))
            if step % cfg.log_every == 0 or step == cfg.steps:
                window = []
            if step % every == 0:
                checkpoint()
        bar.close()
        checkpoint()
    except KeyboardInterrupt:
        bar.close()
        checkpoint(sync=False)
        log(f"interrupted: checkpoint saved to {out / 'last'}; continue with --resume")
        raise
    return {"out": str(out), "step": step, "elapsed_s": elapsed, "counters": counters, "model": model}
