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
        header = ["model", "accuracy", "parameters", "solver", "mean steps", "rel. residual median",
                  "p99", "≤1e-3"]
        rows = [[r["checkpoint"], f"{100 * r['accuracy']:.2f}%", r["parameters"], r["solver"],
                 f"{r['nstep_mean']:.1f}", f"{r['rel_median']:.2e}", f"{r['rel_p99']:.2e}",
                 f"{100 * r['frac_below_1e-3']:.1f}%"] for r in eval_rows]
        sections.append({"title": "Shipped models on the 10,000 MNIST test images",
                         "text": "Relative residual ‖f(z)−z‖/‖f(z)‖ of the state the label is read from: "
                                 "how far from equilibrium each model classifies.",
                         "tables": [{"caption": "deqnca eval", "header": header, "rows": rows}]})
    crop_series, curve_series, resid_series = {}, {}, {}
    pan = make_panoramas(x, y, 1, size=84, per_canvas=3, seed=seed)[0]
    pan_maps, pan_titles = [pan.canvas[0].numpy()], ["canvas: " + " ".join(str(d[0]) for d in pan.digits)]
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
        labels, _ = label_maps(model, pan.canvas[None].to(device), window=28,
                               generator=torch.Generator(device=device).manual_seed(seed))
        pan_maps.append(labels[0].cpu().numpy())
        pan_titles.append(f"{name}: label per cell")
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
    pan_png = figures.image_grid(pan_maps[:1], out / "panorama-canvas.png", titles=pan_titles[:1], ncols=1,
                                 scale=3)
    map_png = figures.image_grid(pan_maps[1:], out / "panorama-labels.png", titles=pan_titles[1:],
                                 ncols=len(pan_maps) - 1, scale=3, cmap="tab10", vmin=0, vmax=9,
                                 legend=[str(d) for d in range(10)])
    steps = list(range(max_steps + 1))
    acc_png = figures.line_plot(steps, curve_series, out / "test-time-accuracy.png", xlabel="rollout steps",
                                ylabel="accuracy", title=f"Accuracy after t steps from noise ({n_curve} images)")
    res_png = figures.line_plot(steps, resid_series, out / "test-time-residual.png", xlabel="rollout steps",
                                ylabel="median relative residual", logy=True,
                                hline=(1e-3, "1e-3"), title="Distance from equilibrium along the rollout")
    cells_models = shipped_cells_models() if cells_models is None else cells_models
    if cells_models:
        from deqnca.tasks.cells import figures as cells_view

        cells_section = [cells_view.section(cells_models, out, n_digits=cells_digits, steps=cells_steps, seed=seed,
                                            device=device, data=(x, y), log=log)]
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
         "text": "An 84×84 canvas with three test digits; each cell is labelled by the read-out MLP applied to "
                 "the mean state in its 28×28 window (colours: tab10, 0–9). Per-digit accuracy over many "
                 "canvases is in docs/nca.md.",
         "images": [(pan_png.name, pan_titles[0]), (map_png.name, "label maps")]},
        *cells_section,
        {"title": "Test-time compute",
         "text": f"Accuracy and distance from equilibrium after t = 0..{max_steps} rollout steps "
                 "(10× the essay model's training length).",
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
                 n_crops=50 if quick else 200, n_curve=50 if quick else 200, max_steps=32 if quick else 160,
                 fig_steps=16 if quick else 64, eval_rows=getattr(args, "eval_rows", None),
                 live_page=getattr(args, "live_page", None),
                 cells_models=shipped_cells_models(getattr(args, "models_dir", None)),
                 cells_digits=16 if quick else 64, cells_steps=80 if quick else 200,
                 log=lambda s: print(s, flush=True))
    print(f"report: {path}  ({time.time() - t0:.0f} s)")
    return 0
