"""Which changes make the equilibrium-faithful model learn: short CPU trainings, one per variant.

    python scripts/equilibrium_recipe.py                       # all variants, 14x14 proxy
    python scripts/equilibrium_recipe.py --only bn,essay --downsample 1   # full-size images

Each variant trains for one pass over the first --images training images (batch 64 unless the
variant says otherwise, Adam 2e-3 cosine as the preset) and is tested on the first 1,000 test
images; one JSON line per variant. The 14x14 proxy (2x2 average-pooled images) is 4x cheaper and
ranks the variants as the full-size images do (docs/mnist.md).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F

from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.task import train

# the first recipe (equilibrium-v0) with Picard in place of Anderson, then one change at a time
PICARD = {"solver": "fixed_point", "solver_kw": {"max_iter": 100, "tol": 1e-4},
          "gradient_kw": {"b_solver": "fixed_point", "b_max_iter": 100, "b_tol": 1e-4}}
VARIANTS = {
    "v0": ("equilibrium-v0", PICARD, {}),
    "renorm+input10": ("equilibrium-v0", {**PICARD, "rule_kw": {"renormalize": True, "input_init_scale": 10}}, {}),
    "renorm+lr1e-2": ("equilibrium-v0", {**PICARD, "rule_kw": {"renormalize": True}}, {"lr": 1e-2}),
    "bn-only": ("equilibrium-v0", {**PICARD, "readout_norm": "batch"}, {}),
    "bn": ("equilibrium", {}, {}),                       # = the preset: renorm + batch-normalised read-out
    "bn+phantom8": ("equilibrium", {"gradient": "phantom", "gradient_kw": {"k": 8}}, {}),
    "bn+adjoint12": ("equilibrium", {"gradient_kw": {"b_max_iter": 12}}, {}),
    "bn+adjoint12+b128": ("equilibrium", {"gradient_kw": {"b_max_iter": 12}}, {"batch_size": 128}),
    "bn+adjoint12+b128+lr4e-3": ("equilibrium", {"gradient_kw": {"b_max_iter": 12}},
                                 {"batch_size": 128, "lr": 4e-3}),
    # fixed-length solves, no host read (capturable as a CUDA graph): forward Picard steps + 12 adjoint
    "fixed40+adjoint12": ("equilibrium-fixed", {}, {}),
    "fixed24+adjoint12": ("equilibrium-fixed", {"solver_kw": {"max_iter": 24}}, {}),
    "essay": ("essay", {}, {}),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated variant names (default: all)")
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--downsample", type=int, default=2, help="average-pool factor (1 = 28x28)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    x, y, xt, yt = x[:args.images], y[:args.images], xt[:1000], yt[:1000]
    if args.downsample > 1:
        x, xt = F.avg_pool2d(x, args.downsample), F.avg_pool2d(xt, args.downsample)
    for name in (args.only.split(",") if args.only else VARIANTS):
        base, model_over, train_over = VARIANTS[name]
        cfg = preset(base, model_over, **{**train_over, "epochs": 1, "eval_batch_size": 250})
        t = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            h = train(cfg.model, cfg, tmp, (x, y, xt, yt), device="cpu", log=lambda *_: None)["history"][-1]
        print(json.dumps({"variant": name, "test_acc": h["test_acc"], "train_loss": round(h["train_loss"], 4),
                          "test_rel_median": h["test_rel_median"], "test_nstep": h["test_nstep"],
                          "seconds": round(time.time() - t)}), flush=True)


if __name__ == "__main__":
    main()
