"""Training on small mazes: DT-recall's progressive loss, the DEQ's loss at a randomly budgeted
equilibrium, and one training loop for both (atomic checkpoints, exact resume, non-finite steps skipped).

Several GPUs: `torchrun --nproc_per_node N -m deqnca.cli maze train --device cuda ...` trains with
DistributedDataParallel as the MNIST trainer does: each process takes rows [rank::N] of every global
batch (the DEQ's random initial states drawn for the global batch, then sliced), DDP averages the
gradients, and rank 0 alone validates, logs and writes checkpoints; N processes train what one does."""
from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import mazes
from ..solvers import residuals, rollout
from ..train import distributed
from ..train.checkpoint import all_finite, load_optimizer_state, read_checkpoint, save_checkpoint
from .model import MazeSolverNet, predict, solve_for_eval


@dataclass
class MazeTrainConfig:
    train_size: int = mazes.TRAIN_SIZE
    train_count: int = mazes.DEFAULT_COUNTS["train"]
    epochs: int = 50
    time_budget: float = 0.0          # seconds of training; 0 = none (stop after `epochs`)
    batch_size: int = 64
    lr: float = 1e-3                  # AdamW, as Bansal et al.
    weight_decay: float = 2e-4
    warmup_steps: int = 100
    schedule: str = "cosine"          # over epochs or the time budget, whichever ends first; or "constant"
    grad_clip: float = 1.0
    alpha: float = 0.01               # DT progressive-loss weight (Bansal et al.'s maze setting)
    residual_weight: float = 0.0      # DEQ: + weight · mean relative residual² at the trained state
    val_count: int = 200              # held-out 9x9 test mazes evaluated after each epoch
    seed: int = 0
    max_bad_steps: int = 50
    generator: str = mazes.DEFAULT_GENERATOR   # maze distribution of the training and held-out mazes

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _ce(logits, target):
    return F.cross_entropy(logits.float(), target)


def dt_loss(model, x, y, cfg: MazeTrainConfig, rng: random.Random, generator=None, shard=None):
    """Bansal et al.'s progressive loss: (1-α)·loss after the max iterations
    + α·loss after k iterations from the *detached* state after n random iterations."""
    T = model.config.train_iters
    f = model.step_map(x)
    z0 = model.initial_state(x)
    terms = []
    if cfg.alpha < 1:
        z, _ = model.gradient(f, rollout, z0, max_iter=T, measure=False)
        terms.append((1 - cfg.alpha) * _ce(model.head(z), y))
    if cfg.alpha > 0:
        n = rng.randrange(T)
        k = rng.randint(1, T - n)
        with torch.no_grad():
            zn, _ = rollout(f, z0, n, measure=False)
        z, _ = model.gradient(f, rollout, zn.detach(), max_iter=k, measure=False)
        terms.append(cfg.alpha * _ce(model.head(z), y))
    return sum(terms), None


def deq_loss(model, x, y, cfg: MazeTrainConfig, rng: random.Random, generator=None, shard=None):
    """Loss at the equilibrium reached from a mixed zero/noise state within a random budget of
    T/2 .. 2T iterations (Anil et al.'s path-independence aids), plus an optional fixed-point
    penalty: without it the trained rule tends to settle into small oscillations, not a fixed point
    (5x5: median relative residual 0.05-0.08 after 40 steps; with weight 1: 1e-3)."""
    T = model.config.train_iters
    z, stats = model.solve(x, max_iter=rng.randint(max(1, T // 2), 2 * T), generator=generator, shard=shard)
    loss = _ce(model.head(z), y)
    if cfg.residual_weight:
        rel = residuals(model.step_map(x)(z), z)[1]
        loss = loss + cfg.residual_weight * (rel ** 2).mean()
    return loss, stats


class _LossModule(torch.nn.Module):
    """The model and its training loss as one module, so that DistributedDataParallel can wrap it
    (the loss functions call the model's parts, not its forward())."""

    def __init__(self, model, loss_fn, cfg: MazeTrainConfig):
        super().__init__()
        self.model, self.loss_fn, self.cfg = model, loss_fn, cfg

    def forward(self, x, y, rng, generator=None, shard=None):
        return self.loss_fn(self.model, x, y, self.cfg, rng, generator, shard)


def _lr(cfg: MazeTrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.schedule == "constant":
        return cfg.lr * warm
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def quick_accuracy(model, layouts, max_iter: int, batch: int = 200) -> float:
    """Fraction of mazes fully solved (every pixel right) from the test-time initial state."""
    model.eval()
    device = next(model.parameters()).device
    solved = 0
    for i in range(0, len(layouts), batch):
        x, y = mazes.to_images(torch.as_tensor(layouts[i:i + batch]).to(device))
        z, _ = solve_for_eval(model, x, max_iter)
        solved += int((predict(model.head(z), x) == y.bool()).flatten(1).all(1).sum())
    model.train()
    return solved / len(layouts)


def train_maze(model_config: dict, cfg: MazeTrainConfig, out, device="cpu", resume=False, cache=None,
               log=print) -> dict:
    """Train, checkpointing to out/last; metrics per epoch (or per time-budget stop) in metrics.jsonl.
    Under torchrun (WORLD_SIZE > 1) the loss is wrapped in DistributedDataParallel."""
    from tqdm.auto import tqdm

    rank, world, device = distributed.init_from_env(device)
    main_rank = rank == 0
    distributed.check_batch_split(cfg.batch_size, world)
    if not main_rank:
        log = lambda *_: None
    warn = warnings.warn if main_rank else (lambda *_, **__: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not main_rank:             # rank 0 generates and caches the maze sets, the others then read them
        distributed.barrier()
    train_layouts = torch.as_tensor(mazes.load_set(cfg.train_size, cfg.train_count, "train", cache=cache,
                                                   log=log, generator=cfg.generator)).to(device)
    val_layouts = mazes.load_set(cfg.train_size, cfg.val_count, "test", cache=cache, log=log,
                                 generator=cfg.generator)
    if main_rank:
        distributed.barrier()
    last_batch = len(train_layouts) % cfg.batch_size
    if world > 1 and 0 < last_batch < world:
        raise ValueError(f"the last batch of an epoch holds {last_batch} mazes, fewer than the {world} processes: "
                         "choose a training count or batch size that leaves at least one maze per process")
    torch.manual_seed(cfg.seed)
    model = MazeSolverNet(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch = step_in_epoch = global_step = 0
    elapsed, history = 0.0, []
    counters = {"skipped_steps": 0, "restored": 0}
    if resume:
        tensors, meta = read_checkpoint(out / "last")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_state(optimizer, tensors, meta)
        progress = meta["maze"]
        epoch, step_in_epoch, global_step = progress["epoch"], progress["step_in_epoch"], progress["global_step"]
        elapsed, history, counters = progress["elapsed_s"], progress["history"], progress["counters"]
        log(f"resuming {out} at epoch {epoch}, batch {step_in_epoch} ({elapsed:.0f}s trained)")
    if main_rank:
        (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "train": asdict(cfg),
                                                    "world_size": world}, indent=1) + "\n")
    steps_per_epoch = math.ceil(len(train_layouts) / cfg.batch_size)
    good_state, bad_run = copy.deepcopy(model.state_dict()), 0
    nparams = sum(p.numel() for p in model.parameters())
    loss_fn = dt_loss if model.config.model == "dt" else deq_loss
    net = _LossModule(model, loss_fn, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # the input projection is differentiated only by DT's BPTT max-iterations term (alpha < 1);
        # with any other combination (progressive loss alone, a phantom/implicit gradient from a
        # projected start) it is out of the graph, which DDP must be told
        projection_trained = model.config.model == "dt" and model.config.gradient == "bptt" and cfg.alpha < 1
        net = DistributedDataParallel(net, device_ids=[device] if device.startswith("cuda") else None,
                                      find_unused_parameters=model.projection is not None and not projection_trained)

    def checkpoint():
        if not main_rank:
            return
        meta = {"maze": {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                         "elapsed_s": elapsed, "history": history, "counters": counters},
                "train_config": asdict(cfg), "parameters": nparams}
        save_checkpoint(out / "last", model, optimizer, meta)

    def out_of_time():
        return cfg.time_budget > 0 and elapsed >= cfg.time_budget

    def progress_fraction():
        by_epochs = (epoch + step_in_epoch / steps_per_epoch) / cfg.epochs
        return max(by_epochs, elapsed / cfg.time_budget) if cfg.time_budget > 0 else by_epochs

    t_mark = time.time()
    try:
        while epoch < cfg.epochs and not out_of_time():
            model.train()
            perm = torch.randperm(len(train_layouts), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            sums = {"loss": 0.0, "n": 0, "solved": 0, "nstep": 0.0}
            bar = tqdm(range(step_in_epoch, steps_per_epoch), desc=f"{model.config.model} epoch {epoch + 1}",
                       initial=step_in_epoch, total=steps_per_epoch, dynamic_ncols=True, mininterval=1.0,
                       file=sys.stderr, disable=not main_rank)
            for b in bar:
                # every random choice of a step is seeded by the step: --resume replays it exactly, and
                # every process makes the same choices (random tensors are drawn for the global batch)
                rng = random.Random(cfg.seed * 1_000_003 + global_step)
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + global_step)
                batch = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                idx = batch[rank::world].to(device)
                shard = distributed.Shard(rank, world, len(batch)) if world > 1 else None
                x, y = mazes.to_images(train_layouts[idx])
                for g in optimizer.param_groups:
                    g["lr"] = _lr(cfg, global_step, progress_fraction())
                loss, stats = net(x, y, rng, gen, shard)
                # each process's loss is a mean over its slice; weighted by its share of the batch, DDP's
                # average of the gradients is the gradient of the global batch's mean (a ragged last
                # batch included)
                share = len(idx) * world / len(batch)
                optimizer.zero_grad(set_to_none=True)
                ok = distributed.all_ok(bool(torch.isfinite(loss)), device)
                if ok:
                    (loss * share if share != 1 else loss).backward()
                    ok = distributed.all_ok(all_finite(p.grad for p in model.parameters() if p.grad is not None),
                                            device)
                if ok:
                    if cfg.grad_clip:          # on the averaged (global-batch) gradients
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    ok = distributed.all_ok(all_finite(model.parameters()), device)
                    if not ok:
                        model.load_state_dict(good_state)
                        optimizer.state.clear()
                        counters["restored"] += 1
                        warn(f"non-finite weights after step {global_step}; restored last good weights")
                if ok:
                    bad_run = 0
                    if global_step % 50 == 0:
                        good_state = copy.deepcopy(model.state_dict())
                    if b % 10 == 0:        # the only host syncs of the loop: a sampled running loss
                        nstep = stats.nstep if stats is not None else model.config.train_iters
                        batch_loss = (distributed.all_sum(loss.detach() * len(idx)) / len(batch)).item()
                        sums["loss"] += batch_loss * len(batch)
                        sums["n"] += len(batch)
                        sums["nstep"] += distributed.agree_max(nstep, device) if world > 1 else nstep
                        bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}",
                                        steps=f"{sums['nstep'] / (sums['n'] / len(batch)):.0f}")
                else:
                    counters["skipped_steps"] += 1
                    bad_run += 1
                    warn(f"non-finite loss/gradient at step {global_step}; step skipped")
                    if bad_run >= cfg.max_bad_steps:
                        raise FloatingPointError(f"{bad_run} consecutive non-finite steps; stopping. "
                                                 f"The last good checkpoint is in {out}")
                global_step += 1
                step_in_epoch = b + 1
                now = time.time()
                elapsed, t_mark = elapsed + now - t_mark, now
                if world > 1 and cfg.time_budget > 0:   # one clock: same stop and learning rates everywhere
                    elapsed = distributed.agree_max(elapsed, device)
                if out_of_time():
                    break
            bar.close()
            epoch_done = step_in_epoch >= steps_per_epoch
            if main_rank:           # rank 0 validates and writes; the others wait for it
                val = quick_accuracy(model, val_layouts,
                                     max_iter=model.config.train_iters * (1 if model.config.model == "dt" else 4))
                rec = {"epoch": epoch + (1 if epoch_done else step_in_epoch / steps_per_epoch),
                       "global_step": global_step, "train_loss": sums["loss"] / max(sums["n"], 1),
                       f"val_solved_{cfg.train_size}": val, "elapsed_s": elapsed, **counters}
                history.append(rec)
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                log(f"epoch {rec['epoch']:.2f}: loss {rec['train_loss']:.4f}  solved {100 * val:.1f}% of "
                    f"{len(val_layouts)} held-out {cfg.train_size}x{cfg.train_size}  ({elapsed:.0f}s trained)")
            if epoch_done:
                epoch, step_in_epoch = epoch + 1, 0
            checkpoint()
            distributed.barrier()
            t_mark = time.time()          # validation time (and waiting for it) is not training time
    except KeyboardInterrupt:
        checkpoint()
        log(f"interrupted: checkpoint saved to {out / 'last'}; continue with --resume")
        raise
    return {"out": str(out), "parameters": nparams, "history": history, "model": model}
