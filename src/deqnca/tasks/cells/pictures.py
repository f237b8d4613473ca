"""Pictures of the self-classifying digits' label maps (docs/cells.md):

- `label_map_gif` / `write_label_gif`: each alive cell's label over time for a row of digits (an animated
  GIF and a PNG strip);
- `mutation_figure`: label maps before and after each digit is swapped for another, and accuracy per step;
- `canvas_figure`: canvases of three digits with their label maps after 200 steps, and each digit's accuracy.

The rollouts are `rollouts.py`'s (the same random streams as `cells.evaluate` and `cells.mutation_test`);
here the mosaics, strips and legends they are drawn with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deqnca.core.fileio import atomic_write
from deqnca.tasks.cells import model as cells
from deqnca.tasks.cells.rollouts import BACKGROUND, PALETTE, _roll, label_colours, log_steps, rollout_report
from deqnca.viz import figures

GAP = (190, 190, 190)                              # between the tiles of a GIF frame


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except TypeError:                       # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_strip(width: int, texts, height: int, px: int = 12, fg=(40, 40, 40)) -> np.ndarray:
    """A white strip with each (x centre, text) drawn centred."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(strip), _font(px)
    for xc, text in texts:
        w = draw.textlength(text, font=font)
        draw.text((xc - w / 2, (height - px) / 2 - 1), text, fill=fg, font=font)
    return np.asarray(strip)


def _legend_strip(width: int, px: int = 12) -> np.ndarray:
    """The ten label colours with their digits, centred on a white strip."""
    from PIL import Image, ImageDraw

    height, box, step = px + 12, px, px + 22
    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(strip), _font(px)
    x0 = max(4, (width - 10 * step) // 2)
    for d in range(10):
        x = x0 + d * step
        draw.rectangle([x, (height - box) // 2, x + box - 1, (height + box) // 2 - 1], fill=tuple(PALETTE[d].tolist()))
        draw.text((x + box + 3, (height - px) / 2 - 1), str(d), fill=(40, 40, 40), font=font)
    return np.asarray(strip)


def _grey_rgb(x) -> np.ndarray:
    """(H, W, 3) uint8 of a grey digit (1, H, W): ink dark on white."""
    g = np.clip(x[0].detach().cpu().numpy(), 0, 1)
    return np.repeat(np.round(255 * (1 - g)).astype(np.uint8)[..., None], 3, axis=-1)


def _mosaic(rows, scale: int, gap: int):
    """(image, x centres, y centres): a grid of equal (H, W, 3) uint8 tiles (a list of rows), each
    upscaled `scale`× and framed by a one-pixel grey line, `gap` white pixels apart."""
    h, w = rows[0][0].shape[:2]
    th, tw = h * scale + 2, w * scale + 2
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    out = np.full((n_rows * (th + gap) - gap, n_cols * (tw + gap) - gap, 3), BACKGROUND, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (th + gap), j * (tw + gap)
            out[y:y + th, x:x + tw] = GAP
            out[y + 1:y + th - 1, x + 1:x + tw - 1] = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
    return out, [j * (tw + gap) + tw / 2 for j in range(n_cols)], [i * (th + gap) + th / 2 for i in range(n_rows)]


def _show(ax, image, xc, yc, columns=None, rows=None, fontsize: int = 9):
    """A mosaic in one axis, its column titles above and its row names on the left."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks(xc if columns else [], columns or [], fontsize=fontsize)
    ax.set_yticks(yc if rows else [], rows or [], fontsize=fontsize)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, pad=3)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mosaic_figure(image, xc, yc, columns, rows, title=None, below: float = 0.0, left: float = 0.9):
    """(figure, width, height in inches): the mosaic pixel for pixel (at `figures.DPI`) with its column and
    row titles, the colour key under it and `below` free inches at the bottom for a plot."""
    import matplotlib.pyplot as plt

    w, h = image.shape[1] / figures.DPI, image.shape[0] / figures.DPI
    top, key = (0.65 if title else 0.35), 0.35
    width, height = left + w + 0.2, top + h + key + below
    fig = plt.figure(figsize=(width, height))
    _show(fig.add_axes((left / width, (below + key) / height, w / width, h / height)), image, xc, yc, columns, rows)
    _legend(fig, ax=fig.add_axes((0, below / height, 1, key / height)))
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    return fig, width, height


def _panel(ax, image, title=None, ylabel=None, fontsize=9):
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.75")
    if title:
        ax.set_title(title, fontsize=fontsize)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=fontsize)


def _legend(fig, y: float = 0.0, ax=None):
    """The label colours 0–9 and the dead cells' as one row: below `y` in the figure, or centred in `ax`."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PALETTE[d] / 255, label=str(d)) for d in range(10)]
    handles.append(Patch(facecolor=np.array(BACKGROUND) / 255, edgecolor="0.6", label="dead"))
    kw = {"handles": handles, "ncol": len(handles), "fontsize": 8, "frameon": False, "handlelength": 1.2,
          "columnspacing": 0.9}
    if ax is not None:
        ax.axis("off")
        ax.legend(loc="center", **kw)
    else:
        fig.legend(loc="upper center", bbox_to_anchor=(0.5, y), **kw)


def write_label_gif(maps: dict, labels, path, x=None, scale: int = 4, fps: float = 3, hold_s: float = 2.0,
                    strip_frames: int = 6, title: str | None = None):
    """(GIF, PNG) of label maps already computed ({step: (K, H, W)}): one frame per step, the K digits
    in a row under their true labels, the legend 0–9 and the step below; the PNG (`<stem>-frames.png`)
    stacks the input (given `x`) and about `strip_frames` of the frames."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = sorted(maps)
    labels = [int(v) for v in labels]
    k, h, w = maps[steps[0]].shape
    tiles = {t: _mosaic([[label_colours(m) for m in maps[t]]], scale, max(2, scale)) for t in steps}
    row, xc, _ = tiles[steps[0]]
    head = _text_strip(row.shape[1], [(c, f"label {v}") for c, v in zip(xc, labels)], 20)
    pad = np.full((6, row.shape[1], 3), BACKGROUND, dtype=np.uint8)
    frames = [np.concatenate([head, tiles[t][0], pad, _legend_strip(row.shape[1])]) for t in steps]
    frames = figures.caption_frames(frames, [f"step {t:,}" for t in steps], px=13)
    durations = [int(round(1000 / fps))] * (len(frames) - 1) + [int(round(1000 * hold_s))]
    atomic_write(path, lambda tmp: iio.imwrite(tmp, frames, extension=".gif", plugin="pillow", duration=durations,
                                               loop=0))

    shown = [steps[i] for i in sorted({int(round(v)) for v in np.linspace(0, len(steps) - 1, strip_frames)})]
    rows = ([("input", [_grey_rgb(v) for v in x])] if x is not None else [])
    rows += [(f"step {t:,}", [label_colours(m) for m in maps[t]]) for t in shown]
    image, xc, yc = _mosaic([r for _, r in rows], 3, 8)
    fig, _, _ = _mosaic_figure(image, xc, yc, [f"label {v}" for v in labels], [name for name, _ in rows], title)
    png = figures.save_figure(fig, path.with_name(path.stem + "-frames.png"), vector=False)
    return path, png


def label_map_gif(model, x, labels, path, steps=None, max_steps: int = 200, seed: int = 0, title: str | None = None):
    """Each alive cell's label over time for a few digits (e.g. 8), as an animated GIF and a PNG strip.

    Args:
        model: a `cells.CellsModel`.
        x: (K, 1, H, W) grey digits at the model's size; labels: their K labels (shown above them).
        path: the GIF; the strip goes beside it as `<stem>-frames.png`.
        steps: the frames' steps (default `log_steps(max_steps)`: 1, 2, 3, 5, ..., max_steps). The CA
            is rolled once to the last of them, as `cells.evaluate` rolls a batch with this seed.

    Returns:
        (GIF path, PNG path).
    """
    steps = sorted({int(t) for t in steps}) if steps is not None else log_steps(max_steps)
    labels = torch.as_tensor(labels)
    _, maps = rollout_report(model, x, cells.truth_map(x, labels), steps=steps[-1], marks=(), grab=steps,
                             keep=len(x), seed=seed)
    return write_label_gif(maps, labels, path, x=x, title=title)


@torch.no_grad()
def mutation_figure(model, x, labels, new_x, new_labels, path, at: int = 200, after: int = 200,
                    offsets=(1, 10, 50, 200), seed: int = 0, title: str | None = None) -> Path:
    """The article's mutation as pictures: label maps at step `at` on x, then at `at` + each offset after
    every digit is replaced by new_x (the state kept where the new digit is alive), and the cell accuracy
    per step over all `at` + `after` steps (against the old labels, then the new ones).

    The rollout is `cells.mutation_test`'s for one batch (the same random stream): its curves are these.
    Rows: the K digits (a few: 2–4); columns: the old digit, the new one, and the label maps.
    """

    device = next(model.parameters()).device
    x, new_x = x.to(device), new_x.to(device)
    labels, new_labels = torch.as_tensor(labels).to(device), torch.as_tensor(new_labels).to(device)
    offsets = [o for o in offsets if 1 <= o <= after]
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003)
    k = len(x)
    before, maps, z = _roll(model, x, cells.truth_map(x, labels), None, at, {at}, gen, keep=k,
                            count_at=range(1, at + 1))
    z = z * cells.alive_mask(new_x).unsqueeze(1)
    later, maps_after, _ = _roll(model, new_x, cells.truth_map(new_x, new_labels), None, after, set(offsets), gen,
                                 z0=z, keep=k, count_at=range(1, after + 1))
    acc = [cells.summarise(c)["accuracy"] for c in [*before.values(), *later.values()]]

    cols = [("old digit", None), ("new digit", None), (f"step {at}", maps[at])]
    cols += [(f"{at} + {o}", maps_after[o]) for o in offsets]
    image, xc, yc = _mosaic([[_grey_rgb(x[i]), _grey_rgb(new_x[i])] + [label_colours(m[i]) for _, m in cols[2:]]
                             for i in range(k)], 3, 8)
    fig, width, height = _mosaic_figure(
        image, xc, yc, [name for name, _ in cols], [f"{int(a)} → {int(b)}" for a, b in zip(labels, new_labels)],
        title or f"Mutation at step {at}: each digit replaced, the state kept where the new one is alive", below=2.3)
    ax = fig.add_axes((0.9 / width, 0.55 / height, (width - 1.1) / width, 1.6 / height))
    ax.plot(np.arange(1, len(acc) + 1), 100 * np.asarray(acc), color="tab:blue", lw=1.5)
    ax.axvline(at + 0.5, color="k", ls="--", lw=1)
    ax.text(at + 0.5, 97, " new digit", fontsize=8, va="top")
    ax.set_xlim(1, len(acc))
    ax.set_ylim(0, 101)
    ax.set_xlabel("step")
    ax.set_ylabel("cell accuracy (%)", fontsize=9)
    ax.grid(True, alpha=0.3)
    return figures.save_figure(fig, path, vector=False)


@torch.no_grad()
def canvas_figure(model, n_canvases: int, path, seed: int = 0, steps: int = 200, data=None,
                  title: str | None = None) -> Path:
    """84×84 canvases of three test digits each (`tasks/mnist/panoramas.py` `make_panoramas`, `cells.canvas_batch`):
    the grey canvas and the label map after `steps` steps, each digit's label and share of right cells
    in the row's title. `data`: (test images, labels) at 28×28 (default: the vendored MNIST test set)."""
    import matplotlib.pyplot as plt

    from deqnca.tasks.mnist.panoramas import make_panoramas

    if data is None:
        from deqnca.data.idx import load_mnist

        data = load_mnist(split="test")
    pans = make_panoramas(data[0], data[1], n_canvases, size=84, per_canvas=3, seed=seed)
    x, truth, segments = cells.canvas_batch(pans)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003)
    _, maps, _ = _roll(model, x.to(device), truth.to(device), segments.to(device), steps, {steps}, gen,
                       keep=len(x))
    pred = maps[steps]
    fig, axes = plt.subplots(n_canvases, 2, figsize=(5.6, 2.9 * n_canvases + 0.5), squeeze=False)
    for n, p in enumerate(pans):
        parts = []
        for k, (label, *_) in enumerate(p.digits):
            mine = segments[n] == k
            share = (pred[n][mine] == label).float().mean().item() if mine.any() else float("nan")
            parts.append(f"{label}: {100 * share:.0f}%")
        _panel(axes[n, 0], _grey_rgb(x[n]), ylabel=f"canvas {n + 1}")
        _panel(axes[n, 1], label_colours(pred[n]), title="right cells per digit  " + "   ".join(parts), fontsize=8)
        axes[n, 0].set_title("input", fontsize=8)
        for _, r, c, _ in p.digits:
            axes[n, 1].add_patch(plt.Rectangle((c - 0.5, r - 0.5), 28, 28, fill=False, ec="0.6", lw=0.6, ls=":"))
    fig.suptitle(title or f"Three digits on one canvas, labels after {steps} steps", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _legend(fig, 0.05)
    return figures.save_figure(fig, path, vector=False)
