"""Figures of the self-classifying digits (docs/cells.md) and their section of the main job's report.

- `curves_figure`: cell accuracy and total agreement against steps (log axis), every model in one figure,
  with the article's values at step 200 for its L2 + noise model as dotted references;
- `write_figures` draws it and, per checkpoint, the pictures of `pictures.py` (the label-map GIF, the
  mutation and the canvas figures) (`deqnca cells figures`); `section` adds the table and the text of the
  main job's report (`reports/report.py`).

A set of digits is rolled out once per model (`rollouts.rollout_report`, as `cells.evaluate` rolls it), with
the label maps kept at the frames' steps: the numbers of a figure are the evaluation's, and a GIF costs no
rollout of its own.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from deqnca.tasks.cells import model as cells
from deqnca.tasks.cells.pictures import canvas_figure, mutation_figure, write_label_gif
from deqnca.tasks.cells.rollouts import TABLE_MARKS, log_steps, rollout_report
from deqnca.viz import figures

# the article's L2 + noise model at step 200 (Distill 2020, its table): the dotted references
ARTICLE_L2_NOISE = {"step": 200, "accuracy": 0.953, "agreement": 0.881}
ARTICLE_LABEL = "article, L2 + noise"
METRICS = (("accuracy", "cell accuracy"), ("agreement", "total agreement"))


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
