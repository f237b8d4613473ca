"""Export the live page: the static files of `web/static/` plus `weights.js`, the shipped models'
weights as the page computes with them (float32, PyTorch layouts, base64).

The page opens from disk (file://): browsers refuse fetch() there, so the weights travel as a script
that sets `window.DEQNCA`. Every weight is the one the forward pass uses, e.g. the contractive rule's
W_z after its spectral rescaling, not the raw parameter. What the page computes is documented in
`static/models.js` and `static/mazes.js`, and tests/test_web.py checks it against PyTorch.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from deqnca.core.fileio import write_bytes_atomic, write_text_atomic
from deqnca.core.resources import models_dir, repo_root

STATIC = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "style.css", "models.js", "mazes.js", "app.js")
MNIST_MODELS = {"essay": "mnist-essay", "equilibrium": "mnist-equilibrium"}
GROW_MODELS = {"lizard-bptt": "grow/lizard-bptt", "lizard-equilibrium": "grow/lizard-equilibrium"}
MAZE_MODELS = {"maze-dt": "maze/dt", "maze-deq-res": "maze/deq-res", "maze-deq": "maze/deq",
               "maze-geodesic": "maze/geodesic-mix", "maze-trace": "maze/trace"}
OPTIONAL = {"maze/trace"}       # not shipped yet: a models folder without it gives a page without it


def default_models_dir() -> Path:
    """The shipped models' folder."""
    return models_dir()


def _load_models(models_dir: Path, cell_checkpoint=None, examples: bool = True) -> dict:
    """Every torch model the page shows, loaded in eval mode on the CPU, and a few MNIST test digits.

    This and `_palette` are the only functions that import other deqnca modules (the package layout moves).
    A model of `OPTIONAL` that the folder lacks is left out."""
    from deqnca.data.idx import load_mnist
    from deqnca.tasks import load

    out = {"mnist": {}, "grow": {}, "maze": {}, "cell": None, "digits": None}
    for kind, models in (("mnist", MNIST_MODELS), ("grow", GROW_MODELS), ("maze", MAZE_MODELS)):
        for name, rel in models.items():
            if rel in OPTIONAL and not (models_dir / f"{rel}.json").exists():
                continue
            out[kind][name] = (load(models_dir / rel, kind=kind)[0], rel)      # in eval mode
    if cell_checkpoint is not None:
        model, _ = load(cell_checkpoint, kind="mnist")
        if model.config.readout != "cell":
            raise ValueError(f"{cell_checkpoint}: read-out {model.config.readout!r}; the per-cell panel "
                             "needs a model trained with readout='cell'")
        out["cell"] = (model.eval(), str(cell_checkpoint))
    if examples:
        try:
            x, y = load_mnist(split="test")
        except (OSError, ValueError):       # no MNIST files: the page simply has no example buttons
            x = None
        if x is not None:
            first = [int((y == k).nonzero()[0]) for k in range(10)]
            out["digits"] = (x[first, 0] * 255).round().to(torch.uint8)
    return out


def _b64(t: torch.Tensor, dtype=np.float32) -> dict:
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))
    return {"shape": list(a.shape), "data": base64.b64encode(a.astype("<" + a.dtype.str[1:]).tobytes()).decode()}


@torch.no_grad()
def mnist_spec(model, source: str) -> dict:
    """An EquilibriumModel as the page runs it: K1 + ReLU, then z' = [z +] tanh(W_z*z + inside) + outside."""
    cfg = model.config
    rule = model.rule
    if cfg.rule not in ("residual_tanh", "contractive_tanh"):
        raise ValueError(f"{source}: rule {cfg.rule!r}; the page runs residual_tanh and contractive_tanh")
    if rule.K2.kernel_size != (3, 3) or model.K1.kernel_size != (3, 3):
        raise ValueError(f"{source}: the page runs 3x3 kernels only")
    if model.K1.stride != (1, 1):
        raise ValueError(f"{source}: input_stride {model.K1.stride[0]}; the page runs the state on the image's grid")
    cu = cfg.input_channels
    # the state half exactly as bind() uses it: the contractive rule rescales it by γ/max(σ, γ) (eval mode)
    w_z = rule.state_weight() if hasattr(rule, "state_weight") else rule.K2.weight[:, cu:]
    r = model.readout
    tensors = {"K1_w": model.K1.weight, "K1_b": model.K1.bias, "W_u": rule.K2.weight[:, :cu], "W_z": w_z,
               "b": rule.K2.bias, "fc1_w": r.fc1.weight, "fc1_b": r.fc1.bias, "fc2_w": r.fc2.weight,
               "fc2_b": r.fc2.bias}
    if r.norm is not None:
        n = r.norm
        tensors.update(bn_mean=n.running_mean, bn_var=n.running_var, bn_w=n.weight, bn_b=n.bias)
    config = {"residual": cfg.rule == "residual_tanh", "conditioning": cfg.conditioning,
              "readout": cfg.readout, "bn_eps": r.norm.eps if r.norm is not None else None,
              "in_channels": cfg.in_channels, "input_channels": cu, "state_channels": cfg.state_channels,
              "classes": cfg.classes, "noise_std": cfg.noise_std, "solver": cfg.solver,
              "solver_kw": cfg.solver_kw}
    return {"kind": "mnist", "source": source, "config": config,
            "tensors": {k: _b64(v) for k, v in tensors.items()}}


@torch.no_grad()
def grow_spec(model, source: str) -> dict:
    rule = model.rule
    tensors = {"w1": rule.w1.weight[:, :, 0, 0], "b1": rule.w1.bias, "w2": rule.w2.weight[:, :, 0, 0],
               "target": model.target}
    return {"kind": "grow", "source": source, "config": rule.config.to_dict(),
            "tensors": {k: _b64(v) for k, v in tensors.items()}}


def _palette() -> torch.Tensor:
    """The maze images' four colours (wall, open, start, goal) as a (1, 3, 2, 2) image, one pixel each."""
    from deqnca.tasks.maze.generate import PALETTE

    return torch.as_tensor(PALETTE).T.reshape(1, 3, 2, 2)


@torch.no_grad()
def maze_spec(model, source: str) -> dict:
    """A maze solver-net: the recall models (DT-recall, the DEQs) as their convolutions; the max-plus models
    (geodesic, trace) by `exact_maze_spec`."""
    cfg = model.config
    if cfg.model in ("geodesic", "trace"):
        return exact_maze_spec(model, source)
    rule = model.rule
    w = rule.recall.weight
    tensors = {"recall_x": w[:, :rule.input_channels], "recall_z": w[:, rule.input_channels:]}
    for i, block in enumerate(rule.blocks):
        tensors[f"block{i}_conv1"] = block.conv1.weight
        tensors[f"block{i}_conv2"] = block.conv2.weight
    heads = [m for m in model.head.layers if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(heads):
        tensors[f"head{i}"] = conv.weight
    if model.projection is not None:
        tensors["projection"] = model.projection.weight
    config = {"form": cfg.model, "width": cfg.width, "blocks": len(rule.blocks), "bound": rule.bound,
              "init": "projection" if model.projection is not None else "zeros", "tol": cfg.tol}
    return {"kind": "maze", "source": source, "config": config,
            "tensors": {k: _b64(v) for k, v in tensors.items()}}


def emitters(form: str, bit, soft, open_, top: float) -> np.ndarray:
    """The emitters s (float32) of a geodesic or trace rule at strength Z = `top` from the per-colour `bit` (a > 0),
    `soft` (sigmoid(a), float32) and `open_`, in torch's float32 arithmetic (Z, a Python float, is rounded to float32
    where torch multiplies it into a float32 tensor): what static/mazes.js computes.

    geodesic: Z * ((a > 0) + soft - soft) * open;   trace: (Z * (a > 0) + soft - soft) * open."""
    f32 = np.float32
    bit, soft, open_ = (np.asarray(v, dtype=f32) for v in (bit, soft, open_))
    if form == "geodesic":
        return f32(top) * ((bit + soft) - soft) * open_
    return ((f32(top) * bit + soft) - soft) * open_


@torch.no_grad()
def exact_maze_spec(model, source: str) -> dict:
    """A geodesic or trace model as the page runs it. A maze holds four colours, so the rule's input fields are
    exported per colour as PyTorch computes them: a > 0 and sigmoid(a) of each flood's emission logit a, the float32
    step cost K (`rule.fields`) and whether the colour is open. The page does not recompute the sigmoid (Math.exp is
    not torch's exp in the last bit); it forms the emitters s, which depend on the grid's size through
    Z = cost_max·H·W, by `emitters`, checked here against `rule.fields` on an image of the four colours. The read-out:
    the head's three convolutions and its symmetrisation."""
    cfg = model.config
    rule = model.rule
    pal = _palette()
    floods = rule.floods if cfg.model == "trace" else rule.state_channels
    a = rule.encode(pal).float()[:, :floods].flatten(2)[0].T           # (colour, flood)
    _, cost, open_ = rule.fields(pal)
    bit, soft, open_ = (a > 0).float(), torch.sigmoid(a), open_.flatten()
    check = pal.repeat(1, 1, 3, 4)                                       # 6 x 8: Z != 1, every colour several times
    s = rule.fields(check)[0][0].flatten(1).T.numpy()
    colour = np.tile(np.array([[0, 1], [2, 3]]), (3, 4)).flatten()
    want = emitters(cfg.model, bit[colour], soft[colour], open_[colour, None], rule.ceiling(check))
    if not np.array_equal(s, want):
        raise ValueError(f"{source}: the page's emitters (export.emitters) are not the {cfg.model} rule's "
                         "(rule.fields): update static/mazes.js and `emitters` together")
    tensors = {"bit": bit, "soft": soft, "cost": cost.flatten(), "open": open_}
    head = model.head.layers if cfg.model == "trace" else model.head[1]
    for i, conv in enumerate(m for m in head.layers if isinstance(m, torch.nn.Conv2d)):
        tensors[f"head{i}"] = conv.weight
    config = {"form": cfg.model, "floods": floods, "channels": rule.state_channels,
              "grid": "cells" if cfg.model == "trace" else "pixels", "cost_min": rule.cost_min,
              "cost_max": rule.cost_max, "symmetry": model.head.symmetry}
    return {"kind": cfg.model, "source": source, "config": config,
            "tensors": {k: _b64(v) for k, v in tensors.items()}}


def build_bundle(loaded: dict) -> dict:
    models = {name: mnist_spec(m, src) for name, (m, src) in loaded["mnist"].items()}
    if loaded["cell"] is not None:
        models["cell"] = mnist_spec(*loaded["cell"])
    models.update({name: grow_spec(m, src) for name, (m, src) in loaded["grow"].items()})
    models.update({name: maze_spec(m, src) for name, (m, src) in loaded["maze"].items()})
    bundle = {"version": 1, "models": models}
    if loaded["digits"] is not None:
        bundle["digits"] = _b64(loaded["digits"], np.uint8)
    return bundle


def write_site(out_dir, models_dir=None, cell_checkpoint=None, examples: bool = True) -> Path:
    """Write the page into `out_dir` (created); returns the path of its index.html.

    `cell_checkpoint`: an EquilibriumModel checkpoint trained with readout='cell' for the per-cell
    panel (default: the shipped `mnist-cell`; False: none, and the panel says so).
    `examples`: include ten MNIST test digits (when the MNIST files are there)."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if cell_checkpoint is None and (models_dir / "mnist-cell.json").exists():
        cell_checkpoint = models_dir / "mnist-cell"        # the shipped per-cell model
    cell_checkpoint = cell_checkpoint or None                # False: no per-cell panel
    return write_bundle(out_dir, build_bundle(_load_models(models_dir, cell_checkpoint, examples)))


_DOC_LINK = re.compile(r'<a href="@REPO@/([^"]+)">(.*?)</a>', re.S)


def doc_links(page: str, out: Path, root: Path | None) -> str:
    """The page's links to the repository's README and docs/ (`<a href="@REPO@/docs/x.md">`): relative to
    wherever the page is written when deqnca runs from a source checkout (`root`); from an installed wheel,
    which holds no docs, the name of the file in the source repository, as text (no link that leads nowhere)."""
    if root is not None:
        repo = os.path.relpath(root, out.resolve()).replace(os.sep, "/")
        return _DOC_LINK.sub(lambda m: f'<a href="{repo}/{m[1]}">{m[2]}</a>', page)
    return _DOC_LINK.sub(lambda m: f'<cite class="doc" title="{m[1]} in the deqnca source repository (not '
                                   f'installed with the package)">{m[2]}</cite>', page)


def write_bundle(out_dir, bundle: dict) -> Path:
    """The static files plus weights.js holding `bundle` (build_bundle's) in `out_dir`. Each file is written
    to a temporary file and renamed into place: a link where one of them goes is replaced, not followed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        data = (STATIC / name).read_bytes()
        if name == "index.html":        # its links to the README and docs/: relative to where the page is written
            data = doc_links(data.decode(), out, repo_root()).encode()
        write_bytes_atomic(out / name, data)
    write_text_atomic(out / "weights.js", "// written by deqnca web (deqnca/web/export.py): weights as the forward "
                      "pass uses them\nwindow.DEQNCA = " + json.dumps(bundle) + ";\n")
    return out / "index.html"
