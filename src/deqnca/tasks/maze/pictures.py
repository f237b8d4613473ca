"""A solved (or not) maze as a figure and the rollout as a GIF: the predicted path in blue, the start
(green, S) and the goal (red, G) drawn on top of it, every GIF frame with its step and relative residual."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deqnca.core.fileio import atomic_write
from deqnca.core.solvers import residuals, rollout
from deqnca.tasks import load
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.evaluate import default_max_iters
from deqnca.tasks.maze.model import EXACT, predict, solve_for_eval

START, GOAL = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)          # their colours in the image (generate.py)


def _is(x, colour):
    return (x.permute(1, 2, 0) == torch.tensor(colour)).all(-1)


EXTRA, MISSED = (1.0, 0.55, 0.0), (0.85, 0.0, 0.85)     # wrong pixels: marked path but not on it / on it, not marked


def _overlay(x, pred, truth=None):
    """RGB uint8 (H, W, 3): the maze, predicted path pixels in blue, start and goal painted over them; with
    `truth`, the wrong pixels in orange (marked, not on the path) and magenta (on the path, not marked)."""
    img = x.permute(1, 2, 0).clone()
    img[pred] = torch.tensor([0.15, 0.35, 1.0])
    if truth is not None:
        img[pred & ~truth] = torch.tensor(EXTRA)
        img[~pred & truth] = torch.tensor(MISSED)
    for colour in (START, GOAL):
        img[_is(x, colour)] = torch.tensor(colour)
    return (img.clamp(0, 1) * 255).round().byte().numpy()


def error_spots(wrong, radius: float, most: int = 8) -> list[tuple[float, float, int]]:
    """(row, col, pixels) of the groups of wrong pixels (a pixel joins the first group whose first pixel is
    within `radius`), largest first: where to point on a picture where a 2-pixel error is invisible."""
    groups: list[list] = []
    for r, c in wrong.nonzero().tolist():
        for g in groups:
            if abs(g[0][0] - r) <= radius and abs(g[0][1] - c) <= radius:
                g.append((r, c))
                break
        else:
            groups.append([(r, c)])
    groups.sort(key=len, reverse=True)
    return [(sum(p[0] for p in g) / len(g), sum(p[1] for p in g) / len(g), len(g)) for g in groups[:most]]


def _centre(x, colour) -> tuple[float, float]:
    rows, cols = _is(x, colour).nonzero(as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())


def _mark_ends(frame, ends, scale: int):
    """Rings around the start and the goal on an upscaled frame (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    radius = max(5, 2 * scale)
    for (row, col), colour in zip(ends, ((0, 170, 0), (220, 0, 0))):
        cy, cx = (row + 0.5) * scale, (col + 0.5) * scale
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=max(2, scale // 2))
    return np.asarray(img)


def picture_name(path, form: str) -> str:
    """A maze picture's name: the checkpoint's (a run's folder for its `last`/`best`), then its model form
    unless the name says it already: `dt` and `deq-res`, not `dt-dt`; `runs/r/last` -> `r-dt`."""
    p = Path(path)
    name = p.parent.name if p.name in ("last", "best") and p.parent.name else p.name
    return name if form in name.split("-") else f"{name}-{form}"


@torch.no_grad()
def show(path, size: int, out, index: int = 0, max_iters: int | None = None, frames: int = 60, device="cpu",
         cache=None, log=print, generator: str = mazes.DEFAULT_GENERATOR,
         readout_symmetry: str | None = None, solver: str | None = None) -> list[Path]:
    """A solved maze (input | prediction | target) and a GIF of the path emerging step by step;
    `readout_symmetry` (geodesic models) overrides the checkpoint's (None: keep it). The geodesic and trace
    models are first solved by `solver` (`eval_solver`), to show the steps their exact fixed point takes; the
    pictures are always Picard's steps (the NCA view)."""
    import imageio.v3 as iio

    from deqnca.viz.figures import caption_frames, image_grid, step_caption

    model, _ = load(path, device, kind="maze")
    if readout_symmetry is not None:
        model.set_readout_symmetry(readout_symmetry)
    lay = mazes.load_set(size, index + 1, "test", cache=cache, log=log, generator=generator)[index:index + 1]
    x, y = mazes.to_images(torch.as_tensor(lay).to(device))
    f = model.step_map(x)
    z = model.inference_state(x)
    if not max_iters and model.config.model in EXACT:       # its exact fixed point: show the steps it takes
        steps = solve_for_eval(model, x, default_max_iters(size, model), solver=solver)[1].sample_steps
        max_iters = max(1, int(steps.max()))
    max_iters = max_iters or default_max_iters(size)
    shots = sorted(set(round(max_iters ** (k / (frames - 1))) for k in range(frames)) | {0, max_iters})
    pictures, t = [], 0
    for s in shots:
        z, _ = rollout(f, z, s - t, measure=False)
        t = s
        rel = residuals(f(z), z)[1][0].item() if s > 0 else None
        pictures.append((s, predict(model.head(z), x)[0].cpu(), rel))
    x0, y0 = x[0].cpu(), y[0].cpu().bool()
    pred = pictures[-1][1]
    ends = [_centre(x0, START), _centre(x0, GOAL)]
    marks = [(ends[0][0], ends[0][1], "tab:green", "S"), (ends[1][0], ends[1][1], "tab:red", "G")]
    solved = bool((pred == y0).all())
    wrong = pred != y0
    spots = [(r, c, "tab:purple", f"{n} px") for r, c, n in error_spots(wrong, max(3.0, mazes.image_side(size) / 25))]
    out = Path(out)
    # depth-first figures keep their names; other distributions' are told apart by a suffix
    tag = "" if generator == mazes.DEFAULT_GENERATOR else f"-{generator}"
    symmetric = model.config.readout_symmetry != "none"
    stem = f"{picture_name(path, model.config.model)}{'-' + model.config.readout_symmetry if symmetric else ''}" \
           f"-size{size}-{index}{tag}"
    verdict = "solved" if solved else f"wrong: {int(wrong.sum())} px"
    panels = [x0.permute(1, 2, 0).numpy(), _overlay(x0, pred, y0), _overlay(x0, y0)]
    label = f"{model.config.model}{' (' + model.config.readout_symmetry + ' read-out)' if symmetric else ''}"
    titles = ["maze", f"{label} after {max_iters} it ({verdict})", "target path"]
    points = [marks, marks + spots, marks]
    if spots:                       # the largest group of wrong pixels, close up (orange: extra, magenta: missed)
        half = 8
        r0 = min(max(0, round(spots[0][0]) - half), x0.shape[1] - 2 * half)
        c0 = min(max(0, round(spots[0][1]) - half), x0.shape[2] - 2 * half)
        panels.append(panels[1][r0:r0 + 2 * half, c0:c0 + 2 * half])
        titles.append(f"close-up ({r0}:{r0 + 2 * half}, {c0}:{c0 + 2 * half})")
        points.append([])
    fig = image_grid(panels, out / f"{stem}.png", titles=titles, ncols=len(panels),
                     scale=max(2.5, mazes.image_side(size) / 60), points=points)
    scale = max(1, 400 // mazes.image_side(size))
    gif_frames = caption_frames(
        [_mark_ends(_overlay(x0, p).repeat(scale, 0).repeat(scale, 1), ends, scale) for _, p, _ in pictures],
        [step_caption(s, rel) + ("   solved" if bool((p == y0).all()) else "") for s, p, rel in pictures])
    gif = out / f"{stem}.gif"
    atomic_write(gif, lambda tmp: iio.imwrite(tmp, gif_frames, extension=".gif", plugin="pillow", duration=100, loop=0))
    log(f"{size}x{size} maze {index}: {'solved' if solved else 'NOT solved'} after {max_iters} iterations")
    return [fig, gif]
