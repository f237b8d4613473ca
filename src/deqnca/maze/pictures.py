"""A solved (or not) maze as a figure and the rollout as a GIF."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import mazes
from ..engine.checkpoint import load_maze_model
from ..solvers import rollout
from .evaluate import default_max_iters
from .model import predict


def _overlay(x, pred):
    """RGB uint8 (H, W, 3): the maze, predicted path pixels in blue."""
    img = x.permute(1, 2, 0).clone()
    img[pred] = torch.tensor([0.15, 0.35, 1.0])
    return (img.clamp(0, 1) * 255).round().byte().numpy()


@torch.no_grad()
def show(path, size: int, out, index: int = 0, max_iters: int | None = None, frames: int = 60, device="cpu",
         cache=None, log=print, generator: str = mazes.DEFAULT_GENERATOR) -> list[Path]:
    """A solved maze (input | prediction | target) and a GIF of the path emerging step by step."""
    import imageio.v3 as iio

    from ..viz.figures import image_grid

    model, _ = load_maze_model(path, device)
    lay = mazes.load_set(size, index + 1, "test", cache=cache, log=log, generator=generator)[index:index + 1]
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
    # depth-first figures keep their names; other distributions' are told apart by a suffix
    tag = "" if generator == mazes.DEFAULT_GENERATOR else f"-{generator}"
    stem = f"{Path(path).name}-{model.config.model}-size{size}-{index}{tag}"
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
