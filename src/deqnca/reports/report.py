"""The README's main job after the evaluation: the NCA view of every shipped model, as figures,
a GIF per model and one self-contained HTML page (`<out>/index.html`).

    deqnca demo --device cpu --out out/demo          # ~3 min of figures on 2 CPU cores
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from deqnca.core.fileio import write_text_atomic
from deqnca.data.idx import load_mnist
from deqnca.tasks import load
from deqnca.tasks.mnist import figures as nca_view
from deqnca.tasks.mnist.label_maps import label_maps
from deqnca.tasks.mnist.panoramas import make_panoramas


def _model_name(path: Path) -> str:
    return path.name.replace("mnist-", "")


def display_name(checkpoint, models_root=None) -> str:
    """What the report calls a checkpoint: a shipped model by its name (`mnist-essay`, `maze/dt`), any other by
    the path it was given, never the folder deqnca happens to be installed in (an absolute path: its last two
    parts, e.g. `run-a/last`)."""
    from deqnca.core.resources import models_dir

    text = str(checkpoint).split("  [")[0]          # `deqnca eval` may append "  [status]"
    p = Path(text)
    for root in (models_root, models_dir()):
        if root is not None:
            try:
                return p.resolve().relative_to(Path(root).resolve()).as_posix()
            except (ValueError, OSError):
                pass
    return "/".join(p.parts[-2:]) if p.is_absolute() else text


def _sample_words(row: dict) -> str:
    """The test images a `deqnca eval` row was measured on: "all 10,000", "the first 500 of the 10,000",
    "2,000 of the 10,000 (evenly spaced)"."""
    n, of = row.get("n"), row.get("of")
    if n is None or of is None or n >= of:
        return f"all {of or n:,}" if (of or n) else "the test set"
    return f"the first {n:,} of the {of:,}" if row.get("subset") == "first" else f"{n:,} of the {of:,}"


def _eval_section(eval_rows: list, models_root) -> dict:
    """The table of `deqnca eval`'s rows, its heading naming the images the numbers come from."""
    mnist = [r for r in eval_rows if "accuracy" in r and "nstep_mean" in r]
    samples = sorted({_sample_words(r) for r in mnist})
    sampled = any(r.get("n", 0) < r.get("of", 0) for r in mnist)
    spaced = any(r.get("subset") == "evenly spaced" for r in mnist)
    several = len(samples) > 1                      # rows on different images: a column says which
    header = ["model", "accuracy"] + (["95% CI"] if sampled else []) + (["images"] if several else []) + [
        "parameters", "solver", "steps", "residual median", "p99", "≤1e-3"]
    rows = []
    for r in mnist:
        low, high = r.get("accuracy_ci95", (r["accuracy"], r["accuracy"]))
        rows.append([display_name(r["checkpoint"], models_root), f"{100 * r['accuracy']:.2f}%"]
                    + ([f"{100 * low:.1f}–{100 * high:.1f}"] if sampled else [])
                    + ([f"{r['n']:,}"] if several else [])
                    + [f"{r['parameters']:,}", r["solver"], f"{r['nstep_mean']:.1f}",
                       f"{r['rel_median']:.1e}", f"{r['rel_p99']:.1e}", f"{100 * r['frac_below_1e-3']:.0f}%"])
    text = ("Steps: the mean number of rule steps per image. Residual: the relative residual ‖f(z)−z‖/‖f(z)‖ of "
            "the state the label is read from — how far from equilibrium each model classifies; ≤1e-3: the share "
            "of images within 1e-3 of a fixed point.")
    if sampled:
        text += (" These numbers come from a sample of the test set, quick to compute (95% CI: the Wilson interval "
                 "of the accuracy, in %); all 10,000 images: <code>deqnca eval</code> (a few minutes), or "
                 "<code>deqnca demo --sample 0</code>.")
    title = (f"Shipped models on {samples[0]} MNIST test images" + (" (evenly spaced)" if spaced else "")
             if not several else "Shipped models on parts of the MNIST test set (the images column says which)")
    return {"title": title,
            "text": text, "tables": [{"caption": "deqnca eval", "header": header, "rows": rows}]}


def _cells_text(names) -> str:
    """The self-classifying section's words for the models it shows (named as its figures name them)."""
    about = {"article": "<i>article</i> is the article's NCA, trained by backpropagation through time",
             "consensus": "<i>consensus</i> is the equilibrium model: a contraction for each cell's local features "
                          "plus a max-plus flood that carries the evidence across the digit, solved to its one "
                          "fixed point and trained by implicit differentiation",
             "equilibrium": "<i>equilibrium</i> is the plain contraction, whose cells hear only a few cells away"}
    said = [about.get(n, f"<i>{n}</i>") for n in names]
    return ("The task of Randazzo et al. (Distill 2020): every cell on a digit's ink sees only its own grey value "
            "and talks to its neighbours until all of them name the digit. " + "; ".join(said) + ". Cell "
            "accuracy: the share of alive cells that name the right label; total agreement: the share of digits "
            "whose alive cells all do.")


def panorama_figure(pan, maps: list, path: Path, ink: float = 0.3) -> Path:
    """The canvas and, per model, its label map: every cell in the colour of its label (tab10), each digit's
    ink outlined, its 28×28 box drawn with its true label and the box's answer (the argmax of the mean logits
    over the box, as `panorama_accuracy` scores it). `maps`: [(name, labels (H, W), logits (K, H, W))]."""
    from deqnca.viz.figures import save_figure

    return save_figure(_panorama_axes(pan, maps, ink), path, vector=False)


def _panorama_axes(pan, maps: list, ink: float):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    canvas = pan.canvas[0].numpy()
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.4 * (1 + len(maps)), 3.9), squeeze=False)
    panels = [("canvas: true labels", None, None)] + list(maps)
    for ax, (name, labels, logits) in zip(axes[0], panels):
        if labels is None:
            ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(labels, cmap="tab10", vmin=-0.5, vmax=9.5, interpolation="nearest")
            ax.contour(canvas, levels=[ink], colors="white", linewidths=2.4)     # the ink, outlined
            ax.contour(canvas, levels=[ink], colors="black", linewidths=1.0)
        right = 0
        for label, r, c, _ in pan.digits:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 28, 28, fill=False, ec="white" if labels is None else "black",
                                   ls="--", lw=0.8))
            if logits is None:
                words, colour = f"true {label}", "white"
            else:
                said = int(logits[:, r:r + 28, c:c + 28].mean((1, 2)).argmax())
                right += said == label
                words, colour = f"true {label}, says {said}", "black" if said == label else "#b00000"
            ax.text(c + 14, r + (1 if r > 10 else 27), words, ha="center", va="bottom" if r > 10 else "top",
                    fontsize=8, color=colour, fontweight="bold",
                    bbox={"fc": "white" if logits is not None else "black", "ec": "none", "alpha": 0.85,
                          "pad": 1.2})
        title = name if logits is None else f"{name}: label of every cell ({right} of {len(pan.digits)} right)"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    handles = [Patch(facecolor=plt.get_cmap("tab10")(d), label=str(d)) for d in range(10)]
    fig.legend(handles=handles, loc="lower center", ncol=11, fontsize=8, frameon=False, handlelength=1.2,
               columnspacing=1.0, title="label colours; black lines: the digits' ink", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def build(models: list[Path], out: Path, device="cpu", data_dir=None, n_crops=300, n_curve=300,
          max_steps=160, fig_steps=64, index=7, seed=0, eval_rows=None, live_page=None, cells_models=None,
          cells_digits=64, cells_steps=200, log=print) -> Path:
    """Draw every figure into `out` and write `out/index.html`.

    `cells_models`: the self-classifying models of their section ({name: checkpoint}; default: the shipped
    `cells/article` and `cells/consensus` that exist); none, and the section is left out with a log line.
    `cells_digits` test digits are rolled to `cells_steps` steps for it (tasks/cells/figures.py)."""
    from deqnca.core.resources import shipped_cells_models
    from deqnca.viz import figures
    from deqnca.viz.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    x, y = load_mnist(data_dir, split="test")
    sections, results = [], {}
    if eval_rows:
        sections.append(_eval_section(eval_rows, models[0].parent if models else None))
    crop_series, curve_series, resid_series = {}, {}, {}
    pan = make_panoramas(x, y, 1, size=84, per_canvas=3, seed=seed)[0]
    pan_maps = []
    fig1_imgs = []
    for path in models:
        name = _model_name(path)
        t0 = time.time()
        model, meta = load(path, device, kind="mnist")
        _, (strip, gif, curves) = nca_view.draw_figure1(
            model, x[index:index + 1].to(device), int(y[index]), out, f"fig1-{name}",
            f"{name}: rollout from noise, test image {index} (label {int(y[index])})", steps=fig_steps, seed=seed)
        fig1_imgs += [(strip.name, f"{name}: frames (channels → RGB by PCA of the last states)"),
                      (gif.name, f"{name}: the rollout, animated"),
                      (curves.name, f"{name}: residual and predicted-class probability per step")]
        labels, logits = label_maps(model, pan.canvas[None].to(device), window=28,
                                    generator=torch.Generator(device=device).manual_seed(seed))
        pan_maps.append((name, labels[0].cpu().numpy(), logits[0].cpu()))
        log(f"  {name}: figure 1 ({time.time() - t0:.0f} s)")
        t0 = time.time()
        crops = nca_view.crop_accuracy(model, x[:n_crops].to(device), y[:n_crops].to(device), seed=seed)
        for anchor, accs in crops["accuracy"].items():
            crop_series[f"{name} {anchor}"] = accs
        results[name] = {"crops": crops}
        log(f"  {name}: crops on {n_crops} images ({time.time() - t0:.0f} s)")
        t0 = time.time()
        curve = nca_view.test_time_compute(model, x[:n_curve].to(device), y[:n_curve].to(device),
                                           max_steps=max_steps, seed=seed)
        curve_series[name] = curve["accuracy"]
        resid_series[name] = curve["rel_median"] + [None]
        results[name]["rollout_curve"] = curve
        log(f"  {name}: {max_steps}-step rollouts of {n_curve} images ({time.time() - t0:.0f} s)")
    fr = list(nca_view.FRACTIONS)
    crop_png = figures.line_plot([100 * f for f in fr], crop_series, out / "fig2-crops.png",
                                 xlabel="visible area (%)", ylabel="accuracy",
                                 title=f"Classification from crops (first {n_crops} test images)")
    examples = [nca_view.crop(x[index:index + 1], f, a)[0, 0].numpy()
                for a in ("top-left", "centre") for f in fr]
    titles = [f"{a} {int(100 * f)}%" for a in ("top-left", "centre") for f in fr]
    grid = figures.image_grid(examples, out / "fig2-crop-examples.png", titles=titles, ncols=len(fr))
    map_png = panorama_figure(pan, pan_maps, out / "panorama-labels.png")
    steps = list(range(max_steps + 1))
    acc_png = figures.line_plot(steps, curve_series, out / "test-time-accuracy.png", xlabel="rollout steps",
                                ylabel="accuracy",
                                title=f"Accuracy after t steps from noise (first {n_curve} test images)")
    res_png = figures.line_plot(steps, resid_series, out / "test-time-residual.png", xlabel="rollout steps",
                                ylabel="median relative residual", logy=True,
                                hline=(1e-3, "1e-3"), title="Distance from equilibrium along the rollout")
    cells_models = shipped_cells_models() if cells_models is None else cells_models
    if cells_models:
        from deqnca.tasks.cells import figures as cells_view

        cells_section = [cells_view.section(cells_models, out, n_digits=cells_digits, steps=cells_steps, seed=seed,
                                            device=device, data=(x, y), log=log)]
        cells_section[0]["text"] = _cells_text(cells_models)       # the names its figures and table use
    else:
        cells_section = []
        log("  self-classifying digits: no cells/article or cells/consensus in the models folder; section left out")
    crop_rows = [[name, anchor] + [f"{100 * a:.1f}%" for a in accs]
                 for name in results for anchor, accs in results[name]["crops"]["accuracy"].items()]
    sections += [
        {"title": "Figure 1 — the rule replayed as a cellular automaton",
         "text": "Each model's update rule iterated from Gaussian noise on one test digit. The essay-faithful "
                 "model is a 16-step NCA: its state keeps moving; the equilibrium-faithful rule is a "
                 "contraction and settles to a fixed point.",
         "images": fig1_imgs},
        {"title": "Figure 2 — truncated inputs",
         "text": "The model sees only a square crop (at its own size: the rule is local and the read-out "
                 "pools globally, so any input size works).",
         "images": [(crop_png.name, "accuracy against visible area, per anchor"),
                    (grid.name, "examples of crops")],
         "tables": [{"caption": f"accuracy from crops, first {n_crops} test images",
                     "header": ["model", "anchor"] + [f"{int(100 * f)}%" for f in fr], "rows": crop_rows}]},
        {"title": "Local read-out on a panorama",
         "text": "An 84×84 canvas with three test digits (dashed: their 28×28 boxes, with their true labels); each "
                 "cell is coloured by the label the read-out MLP gives the mean state in its 28×28 window "
                 "(tab10 colours, 0–9), the digits' ink outlined in black. A digit's answer ('says') is "
                 "the argmax of the mean logits over its box. These models pool globally when they classify, so "
                 "far from a digit the label means little. Per-digit accuracy over many canvases is in "
                 "docs/nca.md.",
         "images": [(map_png.name, "the canvas and each model's label map")]},
        *cells_section,
        {"title": "Test-time compute",
         "text": f"Accuracy and distance from equilibrium after t = 0..{max_steps} rollout steps "
                 f"({max_steps / 16:g}× the essay model's training length), on the first {n_curve} test images.",
         "images": [(acc_png.name, "accuracy per step"), (res_png.name, "median relative residual per step")]},
    ]
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    return write_report(out, "deqnca — the NCA view of the shipped MNIST models", sections,
                        intro="Generated by <code>deqnca demo</code>. Numbers: docs/mnist.md and docs/nca.md."
                        + (f" <b><a href='{live_page}'>Open the live page</a></b>: draw a digit and watch every "
                           "cell answer, grow and damage the lizard, solve a maze — in your browser, from disk."
                           if live_page else ""))


def main(args) -> int:
    from deqnca.core.resources import shipped_cells_models, shipped_models
    from deqnca.engine.devices import pick_device as _device

    out = Path(args.out)
    quick = getattr(args, "quick", False)
    t0 = time.time()
    models = shipped_models(getattr(args, "models_dir", None))
    path = build(models, out, device=_device(args.device), data_dir=args.data_dir,
                 n_crops=24 if quick else 200, n_curve=24 if quick else 200, max_steps=32 if quick else 160,
                 fig_steps=16 if quick else 64, eval_rows=getattr(args, "eval_rows", None),
                 live_page=getattr(args, "live_page", None),
                 cells_models=shipped_cells_models(getattr(args, "models_dir", None)),
                 cells_digits=8 if quick else 64, cells_steps=40 if quick else 200,
                 log=lambda s: print(s, flush=True))
    print(f"report: {path}  ({time.time() - t0:.0f} s)")
    return 0
