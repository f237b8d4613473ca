"""Train the small-CNN baseline on full MNIST images and measure it on crops (zero-padded in place).

    python scripts/cnn_baseline.py --epochs 3 --out results/nca/cnn-baseline.json
Also writes the weights to src/deqnca/_data/models/baselines/cnn-small.safetensors (+ .json).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from deqnca.core.nca import ANCHORS
from deqnca.data.provenance import idx_data
from deqnca.engine.checkpoint import save_checkpoint
from deqnca.tasks.cnn.model import crop_accuracy_cnn
from deqnca.tasks.cnn.task import train_cnn
from deqnca.tasks.mnist.figures import FRACTIONS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/nca/cnn-baseline.json")
    ap.add_argument("--weights", default="src/deqnca/_data/models/baselines/cnn-small")
    ap.add_argument("--run", default="runs/cnn-baseline", help="the training run's folder")
    args = ap.parse_args()
    (x, y, xt, yt), data = idx_data()          # the vendored MNIST and its record (deqnca.data.provenance)
    t = time.time()
    model = train_cnn(x, y, args.run, epochs=args.epochs, seed=args.seed, overwrite=True)
    train_s = time.time() - t
    res = crop_accuracy_cnn(model, xt, yt, FRACTIONS, ANCHORS)
    rec = {"parameters": sum(p.numel() for p in model.parameters()), "epochs": args.epochs, "train_s": train_s,
           "test_acc": res["accuracy"]["centre"][-1], "crops": res, "date": str(date.today()),
           "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "input": "crop zero-padded in place on a 28x28 canvas"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=1))
    save_checkpoint(args.weights, model, meta={          # a model checkpoint of kind "cnn": deqnca.load reads it
        "kind": "cnn", "data": data, "parameters": rec["parameters"], "metrics": {"test_acc": rec["test_acc"]},
        "provenance": {k: rec[k] for k in ("epochs", "train_s", "date", "machine", "input")}})
    print(json.dumps({k: v for k, v in rec.items() if k != "crops"}), json.dumps(res["accuracy"]))


if __name__ == "__main__":
    main()
