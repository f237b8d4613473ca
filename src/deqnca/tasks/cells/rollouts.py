"""One rollout of a set of self-classifying digits, counted and pictured at once (docs/cells.md).

A set is rolled out as `cells.evaluate` rolls it (batches of 256, batch b's stochastic steps drawn from
a generator seeded seed·1,000,003 + b), once, with the label maps kept at the frames' steps: the numbers
of a figure are the evaluation's, and a GIF costs no rollout of its own.

- `rollout_report`: the metrics at the counted steps and the label maps of the first digits;
- `label_map`, `label_colours`: each alive cell's label, and its tab10 colour (`PALETTE`, `BACKGROUND`);
- `log_steps`, `curve_steps`: the steps of a GIF's frames and of a curve.
"""
from __future__ import annotations

import numpy as np
import torch

from deqnca.tasks.cells import model as cells

TABLE_MARKS = (20, 80, 200)
BACKGROUND = (255, 255, 255)                       # dead cells
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
                   dtype=np.uint8)                  # matplotlib's tab10, label 0..9


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
