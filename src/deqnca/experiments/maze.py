"""Train on small mazes, solve large ones: DT-recall (rollout + BPTT, progressive loss) against a
spatial DEQ (the same recall rule squashed, solved to its fixed point, implicit/phantom gradient).

Both models are compositions of the library's parts: `RecallRule` (rules/recall.py) bound to the
maze image by input injection, a solver from solvers.py, a gradient strategy from gradients.py and
the per-pixel `ConvHead` read-out. docs/mazes.md has the method, commands and numbers.
"""
from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..conditioning import make_conditioning
from ..data import mazes
from ..gradients import make_gradient
from ..readout import ConvHead
from ..rules import make_rule
from ..solvers import get_solver, residuals, rollout

# ---- the model -----------------------------------------------------------------------------------


@dataclass
class MazeNetConfig:
    model: str = "dt"                 # "dt" (Bansal et al.'s DT-recall) or "deq"
    width: int = 32
    blocks: int = 2
    init: str = "projection"          # initial state: "projection" (DT), "zeros" / "mixed" (DEQ)
    solver: str = "rollout"
    gradient: str = "bptt"
    gradient_kw: dict = field(default_factory=dict)
    train_iters: int = 30             # DT: max iterations; DEQ: centre of the random iteration budget
    tol: float = 1e-3                 # DEQ: relative residual at which a maze counts as converged
    bound: float = 10.0               # DEQ: states lie in [0, bound) (rules/recall.py: 1 saturates)

    @classmethod
    def from_dict(cls, d: dict) -> "MazeNetConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown maze model config keys {sorted(unknown)}")
        return cls(**copy.deepcopy(d))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "dt": dict(model="dt", init="projection", solver="rollout", gradient="bptt"),
    # phantom gradient: 10 unrolled steps from the (detached) equilibrium (5x5 mazes, 630 steps,
    # 3 seeds: 55-95% solved vs 8-71% with 5); implicit works too (--set gradient=implicit) but its
    # backward fixed point needs the forward one converged
    "deq": dict(model="deq", init="mixed", solver="fixed_point", gradient="phantom",
                gradient_kw={"k": 10, "tau": 1.0}),
}


class MazeSolverNet(nn.Module):
    """x (B, 3, H, W) -> per-pixel path logits (B, 2, H, W) at the state the solver reaches."""

    def __init__(self, config: MazeNetConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = MazeNetConfig.from_dict(config)
        if config.model not in PRESETS:
            raise ValueError(f"maze model {config.model!r}: choose one of {sorted(PRESETS)}")
        self.config = config
        w = config.width
        self.rule = make_rule("recall", input_channels=3, state_channels=w, blocks=config.blocks,
                              form=config.model, bound=config.bound)
        self.conditioning = make_conditioning("injection")
        self.head = ConvHead(w, classes=2)
        # DT-recall's first "thought" is a projection of the input; the DEQ starts from zeros/noise
        self.projection = nn.Conv2d(3, w, 3, padding=1, bias=False) if config.init == "projection" else None
        self.gradient = make_gradient(config.gradient, **config.gradient_kw)

    def step_map(self, x):
        return self.rule.bind(x, self.conditioning)

    def initial_state(self, x, kind: str | None = None, generator=None):
        kind = kind or self.config.init
        shape = (x.shape[0], self.config.width, *x.shape[2:])
        if kind == "projection":
            return F.relu(self.projection(x))
        if kind == "zeros":
            return x.new_zeros(shape)
        if kind == "mixed":
            # TorchDeq's mixed_init (Anil et al. 2022): N(0,1) entries, half of them zeroed; drawn
            # from `generator` so that a resumed run sees the same states
            z = torch.randn(shape, generator=generator, device=x.device)
            return z * (torch.rand(shape, generator=generator, device=x.device) < 0.5)
        raise ValueError(f"initial state {kind!r}: choose projection, zeros or mixed")

    def solve(self, x, max_iter: int, z0=None, generator=None):
        f = self.step_map(x)
        z0 = self.initial_state(x, generator=generator) if z0 is None else z0
        kw = {"max_iter": max_iter, "tol": self.config.tol}
        if self.config.solver == "rollout":
            kw["measure"] = False          # no residual evaluation (an extra step) in training
        return self.gradient(f, get_solver(self.config.solver), z0, **kw)

    def inference_state(self, x):
        """The initial state used at test time: DT's projection, or zeros for the DEQ."""
        return self.initial_state(x, "projection" if self.config.init == "projection" else "zeros")


def predict(logits, x):
    """Path mask (B, H, W): argmax, restricted to open pixels (walls are never path), as DT does."""
    return (logits.argmax(1) == 1) & (x.amax(1) > 0)


def load_maze_model(path, device="cpu"):
    from ..train.checkpoint import CheckpointError, read_checkpoint

    tensors, meta = read_checkpoint(path)
    if "maze" not in meta:
        raise CheckpointError(f"{path}: not a maze checkpoint (made by `deqnca maze train`)")
    model = MazeSolverNet(meta["model_config"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model config "
                              f"({str(e).strip().splitlines()[-1].strip()})") from None
    return model.to(device).eval(), meta


# ---- training ------------------------------------------------------------------------------------


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

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _ce(logits, target):
    return F.cross_entropy(logits.float(), target)


def dt_loss(model, x, y, cfg: MazeTrainConfig, rng: random.Random, generator=None):
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


def deq_loss(model, x, y, cfg: MazeTrainConfig, rng: random.Random, generator=None):
    """Loss at the equilibrium reached from a mixed zero/noise state within a random budget of
    T/2 .. 2T iterations (Anil et al.'s path-independence aids), plus an optional fixed-point
    penalty: without it the trained rule tends to settle into small oscillations, not a fixed point
    (5x5: median relative residual 0.05-0.08 after 40 steps; with weight 1: 1e-3)."""
    T = model.config.train_iters
    z, stats = model.solve(x, max_iter=rng.randint(max(1, T // 2), 2 * T), generator=generator)
    loss = _ce(model.head(z), y)
    if cfg.residual_weight:
        rel = residuals(model.step_map(x)(z), z)[1]
        loss = loss + cfg.residual_weight * (rel ** 2).mean()
    return loss, stats


def _all_finite(tensors) -> bool:
    """One host sync for all tensors (not one per tensor: this runs every step on the GPU)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


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


def solve_for_eval(model, x, max_iter: int, z0=None):
    """Test-time solve: DT rolls out exactly `max_iter` steps; the DEQ iterates until every maze's
    relative residual is below tol (or `max_iter`)."""
    f = model.step_map(x)
    z0 = model.inference_state(x) if z0 is None else z0
    if model.config.model == "dt":
        return rollout(f, z0, max_iter, measure=False)
    return get_solver("fixed_point")(f, z0, max_iter=max_iter, tol=model.config.tol)


def train_maze(model_config: dict, cfg: MazeTrainConfig, out, device="cpu", resume=False, cache=None,
               log=print) -> dict:
    """Train, checkpointing to out/last; metrics per epoch (or per time-budget stop) in metrics.jsonl."""
    from tqdm.auto import tqdm

    from ..train.checkpoint import load_optimizer_state, read_checkpoint, save_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_layouts = torch.as_tensor(mazes.load_set(cfg.train_size, cfg.train_count, "train", cache=cache,
                                                   log=log)).to(device)
    val_layouts = mazes.load_set(cfg.train_size, cfg.val_count, "test", cache=cache, log=log)
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
    (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "train": asdict(cfg)},
                                                indent=1) + "\n")
    steps_per_epoch = math.ceil(len(train_layouts) / cfg.batch_size)
    good_state, bad_run = copy.deepcopy(model.state_dict()), 0
    nparams = sum(p.numel() for p in model.parameters())
    loss_fn = dt_loss if model.config.model == "dt" else deq_loss

    def checkpoint():
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
                       file=sys.stderr)
            for b in bar:
                # every random choice of a step is seeded by the step: --resume replays it exactly
                rng = random.Random(cfg.seed * 1_000_003 + global_step)
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + global_step)
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(device)
                x, y = mazes.to_images(train_layouts[idx])
                for g in optimizer.param_groups:
                    g["lr"] = _lr(cfg, global_step, progress_fraction())
                loss, stats = loss_fn(model, x, y, cfg, rng, gen)
                optimizer.zero_grad(set_to_none=True)
                ok = bool(torch.isfinite(loss))
                if ok:
                    loss.backward()
                    ok = _all_finite(p.grad for p in model.parameters() if p.grad is not None)
                if ok:
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    ok = _all_finite(model.parameters())
                    if not ok:
                        model.load_state_dict(good_state)
                        optimizer.state.clear()
                        counters["restored"] += 1
                        warnings.warn(f"non-finite weights after step {global_step}; restored last good weights")
                if ok:
                    bad_run = 0
                    if global_step % 50 == 0:
                        good_state = copy.deepcopy(model.state_dict())
                    if b % 10 == 0:        # the only host syncs of the loop: a sampled running loss
                        sums["loss"] += loss.item() * len(idx)
                        sums["n"] += len(idx)
                        sums["nstep"] += stats.nstep if stats is not None else model.config.train_iters
                        bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}",
                                        steps=f"{sums['nstep'] / (sums['n'] / len(idx)):.0f}")
                else:
                    counters["skipped_steps"] += 1
                    bad_run += 1
                    warnings.warn(f"non-finite loss/gradient at step {global_step}; step skipped")
                    if bad_run >= cfg.max_bad_steps:
                        raise FloatingPointError(f"{bad_run} consecutive non-finite steps; stopping. "
                                                 f"The last good checkpoint is in {out}")
                global_step += 1
                step_in_epoch = b + 1
                now = time.time()
                elapsed, t_mark = elapsed + now - t_mark, now
                if out_of_time():
                    break
            bar.close()
            epoch_done = step_in_epoch >= steps_per_epoch
            val = quick_accuracy(model, val_layouts, max_iter=model.config.train_iters * (1 if model.config.model == "dt" else 4))
            t_mark = time.time()          # validation time is not training time
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
    except KeyboardInterrupt:
        checkpoint()
        log(f"interrupted: checkpoint saved to {out / 'last'}; continue with --resume")
        raise
    return {"out": str(out), "parameters": nparams, "history": history, "model": model}


# ---- evaluation ----------------------------------------------------------------------------------

DEFAULT_LIMITS = {9: 1000, 13: 1000, 19: 1000, 33: 500, 59: 200, 101: 50, 201: 20}


def iteration_marks(max_iters: int) -> list[int]:
    """1, 2, 5, 10, 20, 30, 50, 100, ... up to max_iters (always included)."""
    marks = [m * 10 ** e for e in range(6) for m in (1, 2, 3, 5)]
    return sorted({m for m in marks if m < max_iters} | {max_iters})


def default_max_iters(size: int) -> int:
    """Enough steps to cross the image a few times (information moves ~5 px per step)."""
    return max(100, 4 * mazes.image_side(size))


def _batch_for(size: int, device: str) -> int:
    # pixels per batch, sized for a few live (B, width, H, W) tensors of 32-64 channels
    pixels = 4_000_000 if str(device).startswith("cuda") else 400_000
    return max(2, pixels // mazes.image_side(size) ** 2)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate_size(model, layouts, max_iters: int, device="cpu", aa_count: int = 50, batch: int | None = None):
    """Accuracy (every pixel right) vs iterations, AA score, residuals, time and memory per maze."""
    model.eval()
    marks = iteration_marks(max_iters)
    size = layouts.shape[1] - 2
    batch = batch or _batch_for(size, device)
    solved_at = torch.zeros(len(marks), dtype=torch.long)
    cos_all, rel_all, steps_all = [], [], []
    seconds = 0.0
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    is_dt = model.config.model == "dt"
    for i in range(0, len(layouts), batch):
        x, y = mazes.to_images(torch.as_tensor(layouts[i:i + batch]).to(device))
        _sync(device)
        t = time.perf_counter()
        f = model.step_map(x)
        z = model.inference_state(x)
        done_at = torch.full((len(x),), max_iters)
        prev = 0
        for j, m in enumerate(marks):
            if is_dt:
                z, _ = rollout(f, z, m - prev, measure=False)
            else:
                z, st = get_solver("fixed_point")(f, z, max_iter=m - prev, tol=model.config.tol)
                converged = (st.rel_residual < model.config.tol).cpu()
                done_at = torch.where(converged & (done_at == max_iters), torch.full_like(done_at, m), done_at)
            prev = m
            ok = (predict(model.head(z), x) == y.bool()).flatten(1).all(1)
            solved_at[j] += int(ok.sum())
            if not is_dt and bool((done_at < max_iters).all()):
                solved_at[j + 1:] += int(ok.sum())      # converged: the answer can no longer change
                break
        _sync(device)
        seconds += time.perf_counter() - t
        fz = f(z)
        rel_all.append(residuals(fz, z)[1].float().cpu())
        steps_all.append(done_at if not is_dt else torch.full((len(x),), max_iters))
        n_aa = min(len(x), aa_count - sum(len(c) for c in cos_all))
        if n_aa >= 2:
            # asymptotic alignment: solve maze a again, now starting from maze a+1's final state
            z_other = torch.roll(z[:n_aa], 1, dims=0)
            z2, _ = solve_for_eval(model, x[:n_aa], max_iters, z0=z_other)
            cos_all.append(F.cosine_similarity(z[:n_aa].flatten(1), z2.flatten(1), dim=1).float().cpu())
    n = len(layouts)
    rel = torch.cat(rel_all)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if str(device).startswith("cuda") else None
    curve = (solved_at.double() / n).tolist()
    best = max(range(len(marks)), key=lambda j: curve[j])
    return {
        "size": size, "image_px": mazes.image_side(size), "n": n, "max_iters": max_iters,
        "accuracy": curve[-1], "best_accuracy": curve[best], "best_iters": marks[best],
        "curve_iters": marks, "curve_accuracy": curve,
        "aa_score": torch.cat(cos_all).mean().item() if cos_all else None,
        "aa_n": sum(len(c) for c in cos_all),
        "mean_iters": torch.cat(steps_all).double().mean().item(),
        "rel_residual_median": rel.median().item(), "converged_frac": (rel < model.config.tol).double().mean().item(),
        "ms_per_maze": 1000 * seconds / n, "batch": batch,
        "peak_mb_per_batch": peak, "peak_mb_per_maze": peak / batch if peak is not None else None,
    }


def parse_size_map(text: str | None, sizes, default: dict | None = None) -> dict:
    """"9=1000,59=200" or a single number for every size -> {size: int}."""
    out = {s: (default or {}).get(s) for s in sizes}
    if not text:
        return out
    if "=" not in text:
        return {s: int(text) for s in sizes}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[int(k)] = int(v)
        except ValueError:
            raise ValueError(f"{text!r}: expected SIZE=N pairs separated by commas, e.g. 9=1000,201=20") from None
    return out


def evaluate_checkpoints(paths, sizes, limits, max_iters, device, out, aa_count=50, cache=None, log=print) -> dict:
    from ..viz.figures import line_plot

    results = {}
    for path in paths:
        model, meta = load_maze_model(path, device)
        rows = {}
        for s in sizes:
            lay = mazes.load_set(s, limits[s], "test", cache=cache, log=log)
            r = evaluate_size(model, lay, max_iters[s], device, aa_count)
            rows[s] = r
            aa = f"{r['aa_score']:.4f}" if r["aa_score"] is not None else "n/a"
            mem = f"{r['peak_mb_per_maze']:.1f} MB" if r["peak_mb_per_maze"] is not None else "n/a (CPU)"
            log(f"{Path(path).name} [{model.config.model}] {s}x{s}: solved {100 * r['accuracy']:.1f}% of {r['n']} "
                f"(best {100 * r['best_accuracy']:.1f}% at {r['best_iters']} it), AA {aa}, "
                f"{r['mean_iters']:.0f} it, {r['ms_per_maze']:.1f} ms/maze, peak {mem}")
        results[str(path)] = {"model": model.config.model, "width": model.config.width, "sizes": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = {p: f"{r['model']} ({Path(p).parent.name or Path(p).name})" for p, r in results.items()}
    line_plot(sizes, {label[p]: [r["sizes"][s]["accuracy"] for s in sizes] for p, r in results.items()},
              out / "accuracy_vs_size.png", "maze size", "fraction fully solved",
              "trained on 9x9; accuracy at the last iteration / at convergence", logx=True)
    marks = iteration_marks(max(max_iters.values()))
    series = {}
    for p, r in results.items():
        for s in sizes:
            row = r["sizes"][s]
            lookup = dict(zip(row["curve_iters"], row["curve_accuracy"]))
            # beyond a size's own max_iters (or after convergence) the answer is frozen at its last value
            series[f"{label[p]} {s}x{s}"] = [lookup.get(m, row["accuracy"] if m > row["max_iters"] else None)
                                            for m in marks]
    line_plot(marks, series, out / "accuracy_vs_iters.png", "test-time iterations", "fraction fully solved",
              "accuracy vs test-time compute", logx=True)
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


# ---- pictures ------------------------------------------------------------------------------------


def _overlay(x, pred):
    """RGB uint8 (H, W, 3): the maze, predicted path pixels in blue."""
    img = x.permute(1, 2, 0).clone()
    img[pred] = torch.tensor([0.15, 0.35, 1.0])
    return (img.clamp(0, 1) * 255).round().byte().numpy()


@torch.no_grad()
def show(path, size: int, out, index: int = 0, max_iters: int | None = None, frames: int = 60, device="cpu",
         cache=None, log=print) -> list[Path]:
    """A solved maze (input | prediction | target) and a GIF of the path emerging step by step."""
    import imageio.v3 as iio

    from ..viz.figures import image_grid

    model, _ = load_maze_model(path, device)
    lay = mazes.load_set(size, index + 1, "test", cache=cache, log=log)[index:index + 1]
    x, y = mazes.to_images(torch.as_tensor(lay).to(device))
    max_iters = max_iters or default_max_iters(size)
    f = model.step_map(x)
    z = model.inference_state(x)
    shots = sorted(set(round(max_iters ** (k / (frames - 1))) for k in range(frames)) | {0, max_iters})
    pictures, t = [], 0
    for s in shots:
        z, _ = rollout(f, z, s - t, measure=False)
        t = s
        pictures.append((s, predict(model.head(z), x)[0].cpu()))
    x0, y0 = x[0].cpu(), y[0].cpu().bool()
    pred = pictures[-1][1]
    solved = bool((pred == y0).all())
    out = Path(out)
    stem = f"{Path(path).name}-{model.config.model}-size{size}-{index}"
    fig = image_grid([x0.permute(1, 2, 0).numpy(), _overlay(x0, pred), _overlay(x0, y0)],
                     out / f"{stem}.png", titles=["maze", f"{model.config.model} after {max_iters} it "
                                                  f"({'solved' if solved else 'wrong'})", "target path"],
                     ncols=3, scale=max(2.5, mazes.image_side(size) / 60))
    scale = max(1, 400 // mazes.image_side(size))
    gif_frames = [_overlay(x0, p).repeat(scale, 0).repeat(scale, 1) for _, p in pictures]
    gif = out / f"{stem}.gif"
    iio.imwrite(gif, gif_frames, extension=".gif", plugin="pillow", duration=100, loop=0)
    log(f"{size}x{size} maze {index}: {'solved' if solved else 'NOT solved'} after {max_iters} iterations")
    return [fig, gif]


# ---- CLI -----------------------------------------------------------------------------------------


def _sizes_arg(p, default):
    p.add_argument("--sizes", type=int, nargs="+", default=list(default), help=f"maze sizes (default {default})")


def cmd_generate(args) -> int:
    counts = args.count or mazes.DEFAULT_COUNTS[args.split]
    for s in args.sizes:
        mazes.check_size(s)
    for s in args.sizes:
        t = time.time()
        lay = mazes.load_set(s, counts, args.split, seed=args.seed, cache=args.cache)
        print(f"{args.split} size {s}: {len(lay)} mazes, {mazes.image_side(s)}x{mazes.image_side(s)} px "
              f"({time.time() - t:.1f}s) in {mazes.cache_path(args.cache or mazes.default_cache(), args.split, s, args.seed)}")
    return 0


def cmd_train(args) -> int:
    from ..cli import _device, _overrides, _threads

    device = _device(args.device)
    _threads(device)
    model_config = {**PRESETS[args.model], "width": args.width, **_overrides(args.set)}
    train_over = {k: v for k, v in {"epochs": args.epochs, "time_budget": args.time_budget,
                                    "train_count": args.train_count, "batch_size": args.batch_size,
                                    "lr": args.lr, "seed": args.seed, "train_size": args.train_size,
                                    "residual_weight": args.residual_weight}.items()
                  if v is not None}
    cfg = MazeTrainConfig.from_dict(train_over)
    mazes.check_size(cfg.train_size)
    out = Path(args.out or f"runs/maze-{args.model}-w{args.width}-seed{cfg.seed}")
    result = train_maze(model_config, cfg, out, device, resume=args.resume, cache=args.cache,
                        log=lambda s: print(s, file=sys.stderr))
    last = result["history"][-1] if result["history"] else {}
    summary = {"out": str(out), "checkpoint": str(out / "last"), "parameters": result["parameters"], **last}
    print(json.dumps(summary) if args.json else f"done: {out / 'last'}  parameters {result['parameters']}  "
          f"held-out solved {last.get(f'val_solved_{cfg.train_size}', float('nan')):.4f}")
    return 0


def cmd_eval(args) -> int:
    from ..cli import _device, _threads

    device = _device(args.device)
    _threads(device)
    for s in args.sizes:
        mazes.check_size(s)
    limits = parse_size_map(args.limit_per_size, args.sizes, DEFAULT_LIMITS)
    limits = {s: v or 100 for s, v in limits.items()}
    max_iters = parse_size_map(args.max_iters, args.sizes)
    max_iters = {s: v or default_max_iters(s) for s, v in max_iters.items()}
    log = (lambda s: print(s, file=sys.stderr))
    res = evaluate_checkpoints(args.checkpoint, args.sizes, limits, max_iters, device, args.out,
                               args.aa_count, args.cache, log)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"wrote {Path(args.out) / 'eval.json'}, accuracy_vs_size.png, accuracy_vs_iters.png")
    return 0


def cmd_show(args) -> int:
    from ..cli import _device

    files = show(args.checkpoint, args.size, args.out, args.index, args.max_iters, device=_device(args.device),
                 cache=args.cache, log=lambda s: print(s, file=sys.stderr))
    for f in files:
        print(f)
    return 0


def add_cli(sub) -> None:
    """`deqnca maze generate|train|eval|show`."""
    maze = sub.add_parser("maze", help="train on small mazes, solve large ones (DT-recall vs DEQ)",
                          description="Mazes: easy-to-hard generalisation and path independence.")
    msub = maze.add_subparsers(dest="maze_command", required=True)

    def common(p, device=True):
        p.add_argument("--cache", default=None, help="maze cache folder (default ~/.cache/deqnca/mazes "
                       "or $DEQNCA_MAZE_CACHE)")
        if device:
            p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")

    p = msub.add_parser("generate", help="generate (and cache) benchmark maze sets")
    common(p, device=False)
    _sizes_arg(p, mazes.TEST_SIZES)
    p.add_argument("--count", type=int, help="mazes per size (default: 50000 train, 1000 test)")
    p.add_argument("--split", choices=mazes.SPLITS, default="test")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = msub.add_parser("train", help="train a maze solver on 9x9 mazes")
    common(p)
    p.add_argument("--model", choices=sorted(PRESETS), required=True)
    p.add_argument("--width", type=int, default=32, help="channels of the state (default 32)")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-count", type=int, help="training mazes (default 50000)")
    p.add_argument("--train-size", type=int, help="maze size trained on (default 9)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--residual-weight", type=float, help="DEQ: weight of the fixed-point penalty "
                   "(mean squared relative residual; default 0)")
    p.add_argument("--out", help="run folder (default runs/maze-<model>-w<width>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model config entry, e.g. --set train_iters=40 (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = msub.add_parser("eval", help="accuracy vs size and vs iterations, AA score, time and memory")
    common(p)
    p.add_argument("checkpoint", nargs="+", help="checkpoint path(s), e.g. runs/maze-dt-w32-seed0/last")
    _sizes_arg(p, mazes.TEST_SIZES)
    p.add_argument("--limit-per-size", help="mazes per size, e.g. 9=1000,59=200,201=20 or one number "
                   f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_LIMITS.items())})")
    p.add_argument("--max-iters", help="test-time iteration cap, one number or SIZE=N pairs "
                   "(default max(100, 4 x image side))")
    p.add_argument("--aa-count", type=int, default=50, help="mazes per size re-solved for the AA score")
    p.add_argument("--out", default="out/maze-eval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = msub.add_parser("show", help="figure of a solved maze and the GIF of it being solved")
    common(p)
    p.add_argument("checkpoint")
    p.add_argument("--size", type=int, default=201)
    p.add_argument("--index", type=int, default=0, help="which test maze")
    p.add_argument("--max-iters", type=int)
    p.add_argument("--out", default="out/maze-show")
    p.set_defaults(func=cmd_show)
