"""Figures of the self-classifying digits (docs/cells.md) and their section of the main job's report.

- `curves_figure`: cell accuracy and total agreement against steps (log axis), every model in one figure,
  with the article's values at step 200 for its L2 + noise model as dotted references;
- `label_map_gif`: each alive cell's label over time for a row of digits (an animated GIF and a PNG strip);
- `mutation_figure`: label maps before and after each digit is swapped for another, and accuracy per step;
- `canvas_figure`: canvases of three digits with their label maps after 200 steps, and each digit's accuracy;
- `write_figures` draws all four for some checkpoints (`deqnca cells figures`); `section` adds the table
  and the text of the main job's report (`reports/report.py`).

A set of digits is rolled out as `cells.evaluate` rolls it (batches of 256, batch b's stochastic steps
drawn from a generator seeded seed·1,000,003 + b), once, with the label maps kept at the frames' steps:
the numbers of a figure are the evaluation's, and a GIF costs no rollout of its own.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from deqnca.tasks.cells import model as cells
from deqnca.viz import figures

# the article's L2 + noise model at step 200 (Distill 2020, its table): the dotted references
ARTICLE_L2_NOISE = {"step": 200, "accuracy": 0.953, "agreement": 0.881}
ARTICLE_LABEL = "article, L2 + noise"
TABLE_MARKS = (20, 80, 200)
BACKGROUND = (255, 255, 255)                       # dead cells
GAP = (190, 190, 190)                              # between the tiles of a GIF frame
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
                   dtype=np.uint8)                  # matplotlib's tab10, label 0..9
METRICS = (("accuracy", "cell accuracy"), ("agreement", "total agreement"))


def log_steps(max_steps: int) -> list[int]:
    """Frame steps 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, ... up to `max_steps` (always last).

    Example:
        >>> log_steps(200)
        [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200]
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    out, decade = {max_steps}, 1
    while decade <= max_steps:
        out |= {int(decade * m) for m in (1, 1.5, 2, 3, 5, 7) if decade * m <= max_steps}
        decade *= 10
    return sorted(out)


def label_colours(labels) -> np.ndarray:
    """(..., H, W, 3) uint8: each label's tab10 colour, `BACKGROUND` where the label is −1 (a dead cell).

    Example:
        >>> label_colours(np.array([[-1, 3]]))[0].tolist()
        [[255, 255, 255], [214, 39, 40]]
    """
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    rgb = PALETTE[np.clip(labels, 0, 9)]
    rgb[labels < 0] = BACKGROUND
    return rgb


def label_map(model, x, z) -> torch.Tensor:
    """(B, H, W) long: each alive cell's label (argmax of its scores), −1 on the dead cells."""
    pred = model.rule.logits(z).argmax(1)
    return torch.where(model.rule.alive(x)[:, 0], pred, torch.full_like(pred, -1))


# --- rollouts ------------------------------------------------------------------------------------------

def curve_steps(max_steps: int, per_decade: int = 24) -> list[int]:
    """The steps a curve is counted at: every step up to about 10, then `per_decade` log-spaced ones per
    decade, and `max_steps` (on a log axis, as smooth as every step and a fraction of the counting).

    Example:
        >>> curve_steps(200)[:12], len(curve_steps(200))
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 42)
    """
    n = int(np.ceil(per_decade * np.log10(max(max_steps, 1)))) + 1
    return sorted({int(v) for v in np.round(np.geomspace(1, max_steps, max(n, 2)))} | {max_steps})


@torch.no_grad()
def _roll(model, x, truth, segments, steps: int, grab, generator, z0=None, keep: int = 0, count_at=()):
    """One batch rolled once: its counts (`cells.count`) after the steps in `count_at` ({step: counts}),
    the label maps of its first `keep` images at the steps in `grab` ({step: (keep, H, W)}), and the last
    state. The rollout is `cells.rollout_counts`' (the same maps, the same random stream)."""
    rule = model.rule
    f = rule.step_map(x, generator)
    z = rule.initial_state(x) if z0 is None else z0
    counts, maps = {}, {}
    for t in range(1, steps + 1):
        z = f(z)
        if t in count_at:
            counts[t] = cells.count(rule.logits(z), truth, segments)
        if keep and t in grab:
            maps[t] = label_map(model, x[:keep], z[:keep]).cpu()
    return counts, maps, z


def _report(counts: dict, marks) -> dict:
    """A report like `cells.evaluate`'s from counts summed over the batches ({step: counts}): "curve" at the
    counted steps ("curve_steps"), "at" the marks; no residuals."""
    steps = sorted(counts)
    curve = {k: [] for k in ("accuracy", "agreement", "unanimity", "digit_accuracy")}
    for t in steps:
        for k, v in cells.summarise(counts[t]).items():
            curve[k].append(v)
    at = {m: {k: v[steps.index(m)] for k, v in curve.items()} for m in sorted(marks) if m in counts}
    first = counts[steps[0]]
    return {"steps": steps[-1], "cells": int(first["cells"]), "digits": int(first["digits"]), "at": at,
            "curve_steps": steps, "curve": curve}


@torch.no_grad()
def rollout_report(model, x, truth, segments=None, steps: int = 200, marks=TABLE_MARKS, grab=(), keep: int = 0,
                   seed: int = 0, batch_size: int = 256, count_at=None, device=None):
    """(report, maps) from one rollout of the set: the metrics after the steps in `count_at` (default
    `curve_steps(steps)` and the marks) as `cells.evaluate` computes them (the same batches and random
    streams, so the same numbers), and the label maps of its first `keep` images at the steps in `grab`
    ({step: (keep, H, W) long, −1 on dead cells}).

    Example:
        >>> x = torch.rand(3, 1, 14, 14)
        >>> r, maps = rollout_report(cells.CellsModel({"rule": "selfclass"}), x, cells.truth_map(x, torch.arange(3)),
        ...                          steps=5, marks=(5,), grab=(1, 5), keep=2)
        >>> r["curve_steps"], sorted(r["at"]), maps[5].shape
        ([1, 2, 3, 4, 5], [5], torch.Size([2, 14, 14]))
    """
    device = device or next(model.parameters()).device
    count_at = set(curve_steps(steps) if count_at is None else count_at) | {m for m in marks if m <= steps}
    total, maps = {}, {}
    for b, start in enumerate(range(0, len(x), batch_size)):
        sl = slice(start, min(len(x), start + batch_size))
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        sb = None if segments is None else segments[sl].to(device)
        counts, m, _ = _roll(model, x[sl].to(device), truth[sl].to(device), sb, steps, set(grab), gen,
                             keep=max(0, min(keep - start, sl.stop - start)), count_at=count_at)
        for t, c in counts.items():
            total[t] = {k: total[t][k] + v for k, v in c.items()} if t in total else c
        for t, v in m.items():
            maps[t] = torch.cat([maps[t], v]) if t in maps else v
    return _report(total, marks), maps


# --- pictures ------------------------------------------------------------------------------------------

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
    iio.imwrite(path, frames, extension=".gif", plugin="pillow", duration=durations, loop=0)

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
    """84×84 canvases of three test digits each (`data.panoramas.make_panoramas`, `cells.canvas_batch`):
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


def curves_figure(reports: dict, path, title: str | None = None) -> Path:
    """Cell accuracy and total agreement after each step 1..N (log axis), one line per model, beside the
    article's values at step 200 for its L2 + noise model (dotted, labelled "article, L2 + noise").

    `reports`: {name: a `cells.evaluate` report with its "curve"} (e.g. rows[0] of the JSON that
    `deqnca cells eval --curves --out FILE` writes)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
    colours = dict(zip(reports, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    longest = ARTICLE_L2_NOISE["step"]
    for name, r in reports.items():
        for ax, (key, _) in zip(axes, METRICS):
            ys = np.asarray(r["curve"][key], dtype=np.float64)
            xs = np.asarray(r.get("curve_steps") or np.arange(1, len(ys) + 1))
            longest = max(longest, int(xs[-1]))
            ax.plot(xs, 100 * ys, lw=1.8, color=colours.get(name), label=name)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000) if t <= longest]
    for ax, (key, label) in zip(axes, METRICS):
        ref = 100 * ARTICLE_L2_NOISE[key]
        ax.axhline(ref, color="k", ls=":", lw=1.2, label=f"{ARTICLE_LABEL}, at step {ARTICLE_L2_NOISE['step']}")
        ax.plot([ARTICLE_L2_NOISE["step"]], [ref], "k.", ms=8)
        ax.annotate(f"{ref:.1f}%", (ARTICLE_L2_NOISE["step"], ref), xytext=(0, -13), textcoords="offset points",
                    ha="center", fontsize=8, bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
        ax.set_xscale("log")
        ax.set_xlim(1, longest * 1.25)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        # 1k, 10k: a log axis to 10,000 leaves no room for "2,000" beside "1,000"
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:.0f}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 101)
        ax.set_xlabel("CA steps (log scale)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    digits = sorted({r.get("digits") for r in reports.values() if r.get("digits")})
    fig.suptitle(title or "Self-classifying MNIST" + (f" ({', '.join(map(str, digits))} test digits)" if digits
                                                      else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return figures.save_figure(fig, path)


# --- the figures of some checkpoints, and the report's section -------------------------------------------

def _load(model_or_path, device):
    if isinstance(model_or_path, tuple):
        return model_or_path
    from deqnca.core.resources import resolve_checkpoint
    from deqnca.tasks.cells.task import load_cells_checkpoint

    return load_cells_checkpoint(resolve_checkpoint(model_or_path), device)


def even_digits(n: int, data):
    """(x, y): `n` evenly spaced test digits, as `deqnca cells eval --images n` takes them."""
    x, y = data
    idx = torch.linspace(0, len(x) - 1, min(n, len(x))).long()
    return x[idx], y[idx]


def mutation_pairs(y, k: int) -> list[int]:
    """For the first k digits, the index of a later digit of another label each (each used once)."""
    used, out = set(range(k)), []
    for i in range(k):
        j = next((j for j in range(k, len(y)) if j not in used and int(y[j]) != int(y[i])), None)
        if j is None:
            raise ValueError(f"not enough digits to mutate {k}: give more digits")
        used.add(j)
        out.append(j)
    return out


def write_figures(models: dict, out_dir, n_digits: int = 64, steps: int = 200, eval_reports: dict | None = None,
                  gif_digits: int = 8, n_mutation: int = 4, n_canvases: int = 1, seed: int = 0, device="cpu",
                  data=None, log=print) -> dict:
    """Every figure of the self-classifying digits for `models` ({name: checkpoint path, shipped name or
    (CellsModel, meta)}) into `out_dir`: per model the label-map GIF and strip of `gif_digits` digits,
    the mutation figure of `n_mutation` and the canvas figure of `n_canvases` (28×28 models only), both at
    min(steps, 200) steps as the article's, and one curves figure of all models. The curves are `n_digits`
    evenly spaced test digits rolled to `steps` (the GIF shows the first of them), or `eval_reports`
    ({name: evaluate report}) where given.

    Returns {"reports": {name: report}, "files": {name: [paths]}, "curves": path, "seconds": {name: s}}.
    """
    from deqnca.data.idx import load_mnist

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_mnist(split="test")
    result = {"reports": dict(eval_reports or {}), "files": {}, "seconds": {}}
    frames, short = log_steps(steps), min(steps, cells.MUTATE_AT)
    for name, source in models.items():
        t0 = time.time()
        model, meta = _load(source, device)
        model.eval()
        size = meta["train_config"].get("size", 28)
        from_file = bool(eval_reports) and name in eval_reports      # the curves come from a file
        n = n_digits if not from_file else gif_digits
        x, y = even_digits(n, data)                 # as `deqnca cells eval --images n` takes them
        x, k = cells.resize_digits(x, size), min(gif_digits, n)
        r, maps = rollout_report(model, x, cells.truth_map(x, y), steps=steps, marks=TABLE_MARKS, grab=frames,
                                 keep=k, seed=seed, device=device)
        if not from_file:
            result["reports"][name] = r
        files = list(write_label_gif(maps, y[:k], out / f"cells-labels-{name}.gif", x=x[:k],
                                     title=f"{name}: the label of every alive cell"))
        if n_mutation:
            x_all, y_all = even_digits(max(n, 8 * n_mutation), data)
            x_all, pairs = cells.resize_digits(x_all, size), mutation_pairs(y_all, n_mutation)
            files.append(mutation_figure(model, x_all[:n_mutation], y_all[:n_mutation], x_all[pairs], y_all[pairs],
                                         out / f"cells-mutation-{name}.png", at=short, after=short,
                                         offsets=[o for o in (1, 10, 50, 200) if o <= short],
                                         seed=seed, title=f"{name}: a new digit at step {short}"))
        if n_canvases and size == 28:
            files.append(canvas_figure(model, n_canvases, out / f"cells-canvas-{name}.png", seed=seed, steps=short,
                                       data=data, title=f"{name}: three digits on a canvas, after {short} steps"))
        elif n_canvases:
            log(f"  {name}: no canvases (trained at {size}×{size}; canvases hold 28×28 digits)")
        result["files"][name] = files
        result["seconds"][name] = time.time() - t0
        log(f"  {name}: self-classifying figures ({result['seconds'][name]:.1f} s)")
    result["curves"] = curves_figure(result["reports"], out / "cells-curves.png")
    return result


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def section(models: dict, out_dir, n_digits: int = 64, steps: int = 200, n_mutation: int = 4, n_canvases: int = 1,
            seed: int = 0, device="cpu", data=None, log=print) -> dict:
    """The self-classifying digits' section of the main job's report (`reports/report.py`):
    {"title", "text", "images": [(file, caption)], "tables": [...]}, its files written into `out_dir`.

    `models`: {name: checkpoint path, shipped name or (CellsModel, meta)}. `n_digits` evenly spaced test
    digits are rolled to `steps` once per model; the table gives cell accuracy and total agreement at 20,
    80 and 200 steps (those ≤ `steps`) on them; the first 8 make the GIF. A 28×28 model costs
    (n_digits + 2·n_mutation + 9·n_canvases) × steps digit-steps (steps ≤ 200; a canvas is 9 digits' area).
    """
    t0 = time.time()
    r = write_figures(models, out_dir, n_digits=n_digits, steps=steps, n_mutation=n_mutation, n_canvases=n_canvases,
                      seed=seed, device=device, data=data, log=log)
    marks = [m for m in TABLE_MARKS if m <= steps]
    header = ["model"] + [f"{label} at {m}" for m in marks for _, label in METRICS]
    rows = [[name] + [_pct(rep["at"][m][key]) for m in marks for key, _ in METRICS]
            for name, rep in r["reports"].items()]
    digits = next(iter(r["reports"].values()))["digits"] if r["reports"] else 0
    images = [(r["curves"].name, f"cell accuracy and total agreement after 1..{steps} steps on {digits} test digits "
               f"(log axis); dotted: the article's L2 + noise model at step 200")]
    for name, files in r["files"].items():
        captions = {"cells-labels": f"{name}: the label of every alive cell over steps 1..{steps} (tab10 colours; "
                                    "white: dead cells)",
                    "cells-mutation": f"{name}: each digit replaced by another at step {min(steps, cells.MUTATE_AT)}, "
                                      "the state kept where the new digit is alive",
                    "cells-canvas": f"{name}: three digits on an 84×84 canvas, each read by its own cells"}
        for f in files:
            stem = f.stem.removesuffix("-frames").removesuffix(f"-{name}")
            suffix = " (frames)" if f.stem.endswith("-frames") else ""
            images.append((f.name, captions.get(stem, name) + suffix))
    log(f"  self-classifying digits: {len(models)} models, {digits} digits × {steps} steps "
        f"({time.time() - t0:.1f} s)")
    return {"title": "Self-classifying digits",
            "text": "The task of Randazzo et al. (Distill 2020): every cell on a digit's ink sees only its own grey "
                    "value and talks to its neighbours until all of them name the digit. <i>article</i> is the "
                    "article's NCA trained by BPTT; <i>equilibrium</i> a contraction whose unique fixed point "
                    "holds the labels. Cell accuracy: the share of alive cells that name the right label; total "
                    "agreement: the share of digits whose alive cells all do.",
            "images": images,
            "tables": [{"caption": f"cell accuracy and total agreement on {digits} evenly spaced test digits: a "
                                   "subset, quick to compute; the full test set's numbers are in docs/cells.md",
                        "header": header, "rows": rows}]}
