"""One plain training loop (nanoGPT style: read it top to bottom).

Guarantees: progress bar with ETA and live loss / accuracy / residual / solver steps; per-epoch
metrics appended to `metrics.jsonl`; an atomic checkpoint (`last`) after every epoch and on Ctrl-C;
`resume=True` continues from `last`, mid-epoch included, with the same batch order; a non-finite
loss, gradient, residual or weight is detected, the step is skipped (or the last good weights are
restored) with a warning, and non-finite weights are never saved.
"""
from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model import EquilibriumModel, count_parameters
from ..readout import ink_mask, ink_vote, per_cell_loss
from . import distributed
from .checkpoint import all_finite, load_optimizer_state, read_checkpoint, save_checkpoint
from .graphs import CapturedStep, graph_unsupported_reason


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"        # or "cosine"
    grad_clip: float = 0.0            # max grad norm; 0 = off
    train_subset: int = 0             # first N training images; 0 = all
    test_subset: int = 0
    eval_batch_size: int = 500
    seed: int = 0
    channels_last: str = "auto"       # "auto": on for CPU, where it is ~2.5x faster for these convs
    max_bad_steps: int = 50           # consecutive non-finite steps before giving up
    cuda_graph: str = "auto"          # "auto": capture the whole step on CUDA when it can be (train/graphs.py)
    amp: str = "off"                  # "bf16": forward pass under bfloat16 autocast (docs/speed.md)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _format(x, channels_last: str, device):
    use_cl = channels_last == "on" or (channels_last == "auto" and torch.device(device).type == "cpu")
    return x.contiguous(memory_format=torch.channels_last) if use_cl else x


AMP_MODES = ("off", "bf16")


def amp_context(amp: str, device):
    """The forward pass's precision. "bf16": torch.autocast runs the convolutions and linear layers in
    bfloat16 while the state, its additions and the loss stay float32 (so a rollout does not accumulate
    bfloat16 rounding); on CPUs with AMX that makes a training step of the essay model ~1.6x faster."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}: choose one of {', '.join(AMP_MODES)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def lr_at(cfg: TrainConfig, progress: float) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr


@torch.no_grad()
def evaluate(model, x, y, batch_size=500, seed=0, channels_last="auto", progress=False, amp="off", **solve_kw):
    """Accuracy and per-sample solver statistics on (x, y), state noise drawn from `seed`.
    Float32 unless amp="bf16" (training's per-epoch evaluation always runs in float32)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    correct, rels, nsteps, fallback = 0, [], [], 0
    it = range(0, len(x), batch_size)
    for i in tqdm(it, desc="eval", leave=False, disable=not progress):
        xb = _format(x[i:i + batch_size].to(device), channels_last, device)
        with amp_context(amp, device):
            logits = model(xb, generator=gen, **solve_kw)
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size].cpu()).sum().item()
        st = model.last_stats
        rels.append(st.rel_residual.float().cpu())
        nsteps.append(st.nstep)
        fallback += st.fallback
    rel = torch.cat(rels)
    return {
        "accuracy": correct / len(x),
        "n": len(x),
        "rel_residual": rel,
        "nstep_mean": sum(nsteps) / len(nsteps),
        "fallback": fallback,
    }


@torch.no_grad()
def recalibrate_readout_norm(model, x, batch_size=500, images=2000, seed=0, channels_last="auto"):
    """Re-estimate the read-out BatchNorm's running statistics for the current weights.

    The pooled equilibrium state differs between images by ~1e-3 while training moves it by more
    than that every few steps, so BatchNorm's exponential running average (momentum 0.1) lags by
    many standard deviations and the eval-mode model can be far worse than the train-mode one
    (measured: 98% train, 10-50% test until the learning rate anneals; docs/mnist.md). A plain
    average over `images` training images with the weights frozen fixes that ("precise BN")."""
    norm = getattr(model.readout, "norm", None)
    if norm is None:
        return
    was_training = model.training
    model.eval()                       # everything else (e.g. the power iteration) stays frozen
    norm.train()
    momentum, norm.momentum = norm.momentum, None      # None: cumulative average
    norm.reset_running_stats()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, min(images, len(x)), batch_size):
        model(_format(x[i:i + batch_size].to(device), channels_last, device), generator=gen, check_input=False)
    norm.momentum = momentum
    model.train(was_training)


def residual_summary(rel: torch.Tensor) -> dict:
    rel = rel.double()
    q = torch.quantile(rel[torch.isfinite(rel)], torch.tensor([0.5, 0.9, 0.99], dtype=torch.double))
    return {"rel_median": q[0].item(), "rel_p90": q[1].item(), "rel_p99": q[2].item(),
            "rel_max": rel.max().item(), "frac_below_1e-3": (rel <= 1e-3).double().mean().item()}


def train(model_config: dict, cfg: TrainConfig, out: Path, data, device="cpu", resume=False,
          log=print) -> dict:
    """Train, checkpointing to `out`. `data` = (x_train, y_train, x_test, y_test) tensors.

    Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel."""
    out = Path(out)
    rank, world, device = distributed.init_from_env(device)
    main_rank = rank == 0
    distributed.check_batch_split(cfg.batch_size, world)
    if not main_rank:
        log = lambda *_: None
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = data
    if cfg.train_subset:
        x_tr, y_tr = x_tr[:cfg.train_subset], y_tr[:cfg.train_subset]
    if cfg.test_subset:
        x_te, y_te = x_te[:cfg.test_subset], y_te[:cfg.test_subset]
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)

    amp_context(cfg.amp, device)          # an unknown mode fails here, before any work
    torch.manual_seed(cfg.seed)
    model = EquilibriumModel(model_config).to(device)
    optimizer = make_optimizer(model, cfg)
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    counters = {"skipped_steps": 0, "restored": 0, "fallback": 0}
    if resume:
        tensors, meta = read_checkpoint(out / "last")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        model.to(device)
        load_optimizer_state(optimizer, tensors, meta)
        epoch, step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        global_step, history, counters = meta["global_step"], meta["history"], meta["counters"]
        cfg = TrainConfig.from_dict({**meta["train_config"], "epochs": cfg.epochs})
        log(f"resuming {out} at epoch {epoch}, batch {step_in_epoch}")
    if main_rank:
        (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "train": asdict(cfg),
                                                     "world_size": world}, indent=1) + "\n")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
    nparams = count_parameters(model)
    steps_per_epoch = math.ceil(len(x_tr) / cfg.batch_size)
    good_state = copy.deepcopy(model.state_dict())
    bad_run = 0
    use_graph = cfg.cuda_graph != "off"
    if use_graph:
        why_not = graph_unsupported_reason(model, cfg, device, world)
        if why_not and cfg.cuda_graph == "on":
            raise ValueError(f"cuda_graph='on' but {why_not}; use cuda_graph='auto' or 'off'")
        use_graph = why_not is None
    captured = None

    def checkpoint(name="last"):
        if not main_rank:
            return
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "history": history, "counters": counters, "train_config": asdict(cfg),
                "parameters": nparams}
        save_checkpoint(out / name, model, optimizer, meta)

    def eager_step(xb, yb, gen):
        """(loss, logits, stats, ok): one optimiser step, skipped when anything is non-finite.
        No input check: a non-finite batch is skipped and counted like any other non-finite step."""
        with amp_context(cfg.amp, device):
            if model.config.readout == "cell":   # self-classifying: every ink cell is supervised
                cells = net(xb, generator=gen, check_input=False, per_cell=True).float()
                mask = ink_mask(xb)
                loss, logits = per_cell_loss(cells, yb, mask), ink_vote(cells.detach(), mask)
            else:
                logits = net(xb, generator=gen, check_input=False).float()
                loss = F.cross_entropy(logits, yb)
        stats = model.last_stats
        optimizer.zero_grad(set_to_none=True)
        ok = distributed.all_ok(bool(torch.isfinite(loss)), device)
        if ok:
            loss.backward()
            ok = all_finite([p.grad for p in model.parameters() if p.grad is not None])
            if ok and cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if ok:
            optimizer.step()
            after_step = getattr(model.rule, "after_step", None)
            if after_step is not None:
                after_step()
            ok = all_finite(list(model.parameters()))
        return loss, logits, stats, ok

    t_start = time.time()
    try:
        while epoch < cfg.epochs:
            model.train()
            perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            gen = torch.Generator(device=device)
            sums = {"loss": 0.0, "correct": 0, "n": 0, "rel": 0.0, "nstep": 0.0, "batches": 0}
            t_epoch = time.time()
            bar = tqdm(range(step_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       initial=step_in_epoch, total=steps_per_epoch, dynamic_ncols=True, mininterval=1.0,
                       disable=not main_rank)
            for b in bar:
                # state noise seeded per batch, so a resumed run sees exactly the noise it would have seen
                gen.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + b + 7_919 * rank)
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size][rank::world].to(device)
                xb, yb = _format(x_tr[idx], cfg.channels_last, device), y_tr[idx]
                lr = lr_at(cfg, (epoch + b / steps_per_epoch) / cfg.epochs)
                for g in optimizer.param_groups:
                    if torch.is_tensor(g["lr"]):      # a captured Adam step reads it from the device
                        g["lr"].fill_(lr)
                    else:
                        g["lr"] = lr
                if use_graph and captured is None and len(idx) == cfg.batch_size:
                    try:
                        captured = CapturedStep(model, optimizer, xb)
                        log(f"training step captured as a CUDA graph (batch {cfg.batch_size})")
                    except Exception as e:   # capture is an optimisation: fall back to eager steps
                        warnings.warn(f"CUDA-graph capture failed ({type(e).__name__}: {e}); training eagerly")
                        use_graph = False
                        optimizer.zero_grad(set_to_none=True)
                if captured is not None and len(idx) == cfg.batch_size:
                    # forward, backward and optimiser step in one replay (a ragged last batch runs eagerly)
                    loss, logits, stats = captured(xb, yb, model.initial_state(xb, gen))
                    ok = bool(captured.finite)
                else:
                    loss, logits, stats, ok = eager_step(xb, yb, gen)
                counters["fallback"] += stats.fallback
                if not ok and not all_finite(list(model.parameters())):
                    # the step itself blew the weights up: restore the last good weights
                    model.load_state_dict(good_state)
                    if captured is not None:
                        captured.zero_momentum()     # in place: the graph holds these buffers
                    else:
                        optimizer.state.clear()
                    counters["restored"] += 1
                    warnings.warn(f"non-finite weights after step {global_step}; restored last good "
                                  "weights and reset optimizer momentum")
                if not ok:
                    counters["skipped_steps"] += 1
                    bad_run += 1
                    if counters["skipped_steps"] <= 5 or counters["skipped_steps"] % 100 == 0:
                        warnings.warn(f"non-finite loss/gradient at step {global_step} (epoch {epoch + 1}, "
                                      f"batch {b}); step skipped ({counters['skipped_steps']} so far)")
                    if bad_run >= cfg.max_bad_steps:
                        raise FloatingPointError(f"{bad_run} consecutive non-finite steps; stopping. "
                                                 "The last good checkpoint is in " + str(out))
                else:
                    bad_run = 0
                    if global_step % 50 == 0:
                        good_state = copy.deepcopy(model.state_dict())
                    sums["loss"] += loss.item() * len(yb)
                    sums["correct"] += (logits.argmax(1) == yb).sum().item()
                    sums["n"] += len(yb)
                    rel = stats.rel_residual
                    sums["rel"] += rel[torch.isfinite(rel)].mean().item() if torch.isfinite(rel).any() else 0
                    sums["nstep"] += stats.nstep
                    sums["batches"] += 1
                global_step += 1
                step_in_epoch = b + 1
                if sums["n"] and (b % 10 == 0 or b == steps_per_epoch - 1):
                    bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}",
                                    acc=f"{sums['correct'] / sums['n']:.3f}",
                                    rel=f"{sums['rel'] / sums['batches']:.2e}",
                                    steps=f"{sums['nstep'] / sums['batches']:.1f}")
            bar.close()
            train_time = time.time() - t_epoch
            if not main_rank:            # rank 0 evaluates and writes; the others wait for it
                epoch, step_in_epoch = epoch + 1, 0
                distributed.barrier()
                continue
            recalibrate_readout_norm(model, x_tr, cfg.eval_batch_size, seed=epoch, channels_last=cfg.channels_last)
            ev = evaluate(model, x_te, y_te, cfg.eval_batch_size, seed=12345, channels_last=cfg.channels_last)
            rec = {"epoch": epoch + 1, "train_loss": sums["loss"] / max(sums["n"], 1),
                   "train_acc": sums["correct"] / max(sums["n"], 1),
                   "train_rel_mean": sums["rel"] / max(sums["batches"], 1),
                   "train_nstep": sums["nstep"] / max(sums["batches"], 1),
                   "test_acc": ev["accuracy"], "test_nstep": ev["nstep_mean"],
                   **{f"test_{k}": v for k, v in residual_summary(ev["rel_residual"]).items()},
                   "epoch_time_s": train_time, "elapsed_s": time.time() - t_start, **counters}
            history.append(rec)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            log(f"epoch {epoch + 1}: loss {rec['train_loss']:.4f} train {rec['train_acc']:.4f} "
                f"test {rec['test_acc']:.4f} rel median {rec['test_rel_median']:.2e} "
                f"nstep {rec['test_nstep']:.1f} ({train_time:.1f}s)")
            epoch, step_in_epoch = epoch + 1, 0
            good_state = copy.deepcopy(model.state_dict())
            checkpoint()
            distributed.barrier()
    except KeyboardInterrupt:
        checkpoint()
        log(f"interrupted: checkpoint saved to {out / 'last'}; continue with --resume")
        raise
    return {"parameters": nparams, "history": history, "out": str(out), "model": model}
