"""Replaying a trained growing NCA with its stochastic rule: animations and the side-by-side measurements.

Both trainers are scored the same way, by the stochastic rule the paper runs (the NCA view), from one
seed cell: loss after the training horizon, persistence at 10× the horizon, regeneration after a
random disc is erased. For an equilibrium-trained rule the measurement also solves the expected map
from the grown state and replays the stochastic rule from that z*: a true fixed point must stay put.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deqnca.core.fileio import atomic_write, read_bytes_bounded
from deqnca.core.nca import even_frames
from deqnca.core.solvers import get_solver
from deqnca.tasks.grow.model import PAPER_HORIZON, disc_masks
from deqnca.tasks.grow.rule import target_loss

MAX_METRICS_BYTES = 256 << 20      # a run's metrics.jsonl read by `grow measure`


def rgb_on_white(z: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) states → (..., H, W, 3) uint8: premultiplied RGBA composited over white."""
    rgb, alpha = z[..., :3, :, :], z[..., 3:4, :, :].clamp(0, 1)
    img = (1.0 - alpha + rgb).clamp(0, 1)
    return (img.movedim(-3, -1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def replay(rule, z0, steps: int, seed: int, keep_frames: bool = False, frames=None, residuals: bool = False):
    """Run the stochastic rule; returns the final state and, when asked, the frames on the CPU: every step's
    (T+1 of them), or only those of the steps in `frames` (memory bounded however long the replay). With
    `residuals`, also each kept frame's relative residual ‖z_t − z_(t−1)‖ / ‖z_t‖ (None for step 0)."""
    gen = torch.Generator(device=z0.device).manual_seed(seed)
    f = rule.stochastic_map(gen)
    keep = set(range(steps + 1) if frames is None else (int(t) for t in frames)) if keep_frames else set()
    z, kept = z0, [z0.cpu()] if 0 in keep else []
    rels = [None] if 0 in keep else []
    for t in range(1, steps + 1):
        prev, z = z, f(z)
        if t in keep:
            kept.append(z.cpu())
            rels.append(float((z - prev).norm() / z.norm().clamp_min(1e-12)))
    frames_out = torch.stack(kept) if keep_frames else None
    return (z, frames_out, rels) if residuals else (z, frames_out)


MAX_GIF_FRAMES = 200


def _scale(img: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(img, k, axis=-3), k, axis=-2)


def write_gif(frames: np.ndarray, path: Path, fps: int = 20, scale: int = 4, captions=None) -> Path:
    """Frames (T, H, W, 3) uint8 as a looping GIF, upscaled by `scale`, each with its caption below."""
    import imageio.v3 as iio

    from deqnca.viz.figures import caption_frames

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _scale(frames, scale)
    if captions is not None:
        frames = caption_frames(frames, captions)
    atomic_write(path, lambda tmp: iio.imwrite(tmp, frames, extension=".gif", plugin="pillow",
                                               duration=int(round(1000 / fps)), loop=0))
    return path


def pattern_box(target: torch.Tensor, frames: torch.Tensor, margin: int = 3) -> tuple[slice, slice]:
    """(rows, cols) of the box around the target's visible cells and the frames' live ones, plus `margin`."""
    alive = (target[3] > 0.1) | (frames[:, 3] > 0.1).any(0)
    rows, cols = alive.any(1).nonzero().flatten(), alive.any(0).nonzero().flatten()
    if len(rows) == 0:
        return slice(None), slice(None)
    H, W = alive.shape
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, H)),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, W)))


@torch.no_grad()
def show(model, out: Path, steps: int, seed: int = 0, label: str = "") -> list[Path]:
    """Growth GIF from one seed, regeneration GIF (grow, erase a disc, regrow), a PNG frame strip, all
    cropped to the pattern; every GIF frame shows its step and the relative residual of that step."""
    from deqnca.viz.figures import image_grid, step_caption

    rule, target = model.rule, model.target
    H, W = target.shape[1:]
    device = target.device
    z0 = rule.seed(1, H, W, device=device)
    # the GIFs keep at most MAX_GIF_FRAMES evenly spaced frames, the strip its own few: memory does not grow
    # with the steps
    # the strip denser late than early: the first steps of growth differ little and show almost nothing
    gif_steps = even_frames(steps, MAX_GIF_FRAMES)
    picks = sorted({int(round(steps * (k / 6) ** 1.5)) for k in range(7)})
    kept = sorted(set(gif_steps) | set(picks) | {steps})
    at = {t: i for i, t in enumerate(kept)}
    z_grown, growth, grow_rel = replay(rule, z0, steps, seed, keep_frames=True, frames=kept, residuals=True)
    damage = disc_masks(1, H, W, torch.Generator(device=device).manual_seed(seed + 1), device)
    _, regrowth, regrow_rel = replay(rule, z_grown * damage, steps, seed + 2, keep_frames=True, frames=gif_steps,
                                     residuals=True)
    rows, cols = pattern_box(target.cpu(), torch.cat([growth[:, 0], regrowth[:, 0]]))
    growth_rgb = rgb_on_white(growth[:, 0])[:, rows, cols]
    regrowth_rgb = rgb_on_white(regrowth[:, 0])[:, rows, cols]
    gif_rgb = growth_rgb[[at[t] for t in gif_steps]]
    out.mkdir(parents=True, exist_ok=True)
    scale = max(4, -(-280 // growth_rgb.shape[2]))          # wide enough for the caption
    grown_caption = f"grown: {step_caption(steps, grow_rel[at[steps]])}"
    files = [write_gif(gif_rgb, out / "growth.gif", scale=scale,
                       captions=[step_caption(t, grow_rel[at[t]]) for t in gif_steps]),
             write_gif(np.concatenate([gif_rgb[-1:].repeat(10, 0), regrowth_rgb]), out / "regeneration.gif",
                       scale=scale, captions=[grown_caption] * 10 + [
                           "damaged" if t == 0 else f"regrowing {step_caption(t, r)}"
                           for t, r in zip(gif_steps, regrow_rel)])]
    losses = [target_loss(growth[at[t]].to(device), target[None]).item() for t in picks]
    panels = [growth_rgb[at[t]] for t in picks] + [rgb_on_white(target[None])[0][rows, cols]]
    titles = [f"t={t}\nL2 {loss:.4f}" for t, loss in zip(picks, losses)] + ["target"]
    files.append(image_grid(panels, out / "frames.png", titles=titles, ncols=len(panels), scale=1.6))
    return files


def default_horizon(train_config: dict) -> int:
    """Growth steps to replay a run over: its longest rollout, and at least the paper's 96. A pool-trained
    pattern lives across many visits, so one visit's rollout can be far shorter than the growth (the
    windowed recipe of docs/grow.md draws 1..16 steps per visit)."""
    return max(int(train_config.get("max_steps", PAPER_HORIZON)), PAPER_HORIZON)


@torch.no_grad()
def measure(model, meta: dict, metrics_path: Path | None, samples: int = 8, seed: int = 0,
            threshold: float = 0.01, horizon: int | None = None) -> dict:
    """The side-by-side numbers for one checkpoint (fixed seeds, averaged over `samples` replays).

    `horizon`: growth steps replayed (persistence at 10×); default `default_horizon`. Runs
    trained with different rollout ranges are compared at one horizon."""
    rule, target = model.rule, model.target
    cfg = meta.get("train_config", {})
    horizon = int(horizon or default_horizon(cfg))
    if horizon < 1:
        raise ValueError(f"horizon {horizon}: need at least 1 step")
    H, W = target.shape[1:]
    device = target.device
    z0 = rule.seed(samples, H, W, device=device)
    grown, _ = replay(rule, z0, horizon, seed)
    persisted, _ = replay(rule, grown, 9 * horizon, seed + 1)
    damage = disc_masks(samples, H, W, torch.Generator(device=device).manual_seed(seed + 2), device)
    regrown, _ = replay(rule, grown * damage, horizon, seed + 3)
    progress = meta.get("progress", {})
    row = {"trainer": cfg.get("trainer"), "variant": cfg.get("variant"),
           "train_steps": meta.get("step", progress.get("global_step")),
           "train_seconds": meta.get("elapsed_s", progress.get("elapsed_s")), "horizon": horizon,
           "loss_grown": target_loss(grown, target[None]).mean().item(),
           "loss_persist_10x": target_loss(persisted, target[None]).mean().item(),
           "loss_regenerated": target_loss(regrown, target[None]).mean().item(),
           "loss_damaged": target_loss(grown * damage, target[None]).mean().item()}
    # the equilibrium view: solve the expected map from the grown state, then check that the
    # stochastic rule leaves the solution where it is
    solve = get_solver(cfg.get("solver", "fixed_point"))
    z_star, stats = solve(rule.expected_map(), grown, max_iter=int(cfg.get("solver_iter", 32)),
                          tol=float(cfg.get("solver_tol", 1e-3)))
    drifted, _ = replay(rule, z_star, horizon, seed + 4)
    row.update(loss_fixed_point=target_loss(z_star, target[None]).mean().item(),
               fixed_point_rel_residual=stats.rel_residual.mean().item(),
               loss_fixed_point_after_stochastic_replay=target_loss(drifted, target[None]).mean().item())
    if metrics_path is not None and metrics_path.exists():
        text = read_bytes_bounded(metrics_path, MAX_METRICS_BYTES).decode("utf-8", errors="replace")
        try:
            records = [r for r in map(json.loads, filter(str.strip, text.splitlines())) if isinstance(r, dict)]
        except ValueError as e:
            raise ValueError(f"{metrics_path}: a line is not JSON ({e}); the run's record is corrupt") from None
        hit = next((r for r in records if isinstance(r.get("loss"), (int, float)) and r["loss"] < threshold), None)
        row.update(threshold=threshold, seconds_to_threshold=hit["wall_s"] if hit else None,
                   steps_to_threshold=hit["step"] if hit else None,
                   divergences=records[-1].get("divergences", 0) if records else None,
                   skipped_steps=records[-1].get("skipped_steps", 0) if records else None,
                   extinctions=records[-1].get("extinctions") if records else None)
    return row
