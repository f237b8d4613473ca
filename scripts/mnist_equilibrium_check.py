"""An equilibrium MNIST classifier's three claims, on the test set: its accuracy, its distance from the fixed
point on every image, and the same predictions from several initial states (path independence).

    python scripts/mnist_equilibrium_check.py runs/strided-seed0/last runs/strided-seed1/last \
        runs/strided-seed2/last --json results/mnist/strided_check.json
    python scripts/mnist_equilibrium_check.py mnist-equilibrium --limit 500        # a quick look

Each model solves every test image from three states: noise N(0, 1) of two seeds, and zeros. It prints, per
model and start, the accuracy and the largest relative residual ‖f(z)−z‖/‖f(z)‖, then the share of images
whose three predictions are identical, and the accuracy's mean ± sd over the models (from the first start).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

STARTS = ("noise seed 0", "noise seed 1", "zeros")


@torch.no_grad()
def check(model, x, y, batch_size: int = 500) -> dict:
    """Per start: accuracy, residuals and predictions of `model` on (x, y); and the share of images whose
    predictions agree across the starts."""
    from deqnca.tasks.mnist.evaluate import as_layout

    model.eval()
    rows, predictions = {}, {}
    for k, start in enumerate(STARTS):
        gen = torch.Generator().manual_seed(k)
        preds, rels, steps = [], [], []
        for i in range(0, len(x), batch_size):
            xb = as_layout(x[i:i + batch_size], "auto", "cpu")
            z0 = model.initial_state(xb, gen)
            if start == "zeros":
                z0 = torch.zeros_like(z0)
            logits = model(xb, z0=z0, check_input=False)
            preds.append(logits.argmax(1))
            rels.append(model.last_stats.rel_residual.float())
            steps.append(model.last_stats.nstep)
        p, rel = torch.cat(preds), torch.cat(rels)
        predictions[start] = p
        rows[start] = {"accuracy": (p == y).float().mean().item(), "rel_residual_max": rel.max().item(),
                       "rel_residual_median": rel.median().item(),
                       "share_rel_le_1e-4": (rel <= 1e-4).float().mean().item(), "nstep_mean": sum(steps) / len(steps)}
    first = predictions[STARTS[0]]
    same = torch.stack([predictions[s] == first for s in STARTS]).all(0)
    return {"starts": rows, "identical_predictions": same.float().mean().item(), "n": len(x)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoints or shipped model names")
    ap.add_argument("--limit", type=int, default=0, help="the first N test images (0: all 10,000)")
    ap.add_argument("--max-iter", type=int, default=0, help="solver steps (0: the model's own)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    from deqnca import load
    from deqnca.data.idx import load_mnist
    from deqnca.tasks.mnist.model import count_parameters

    torch.set_num_threads(1)
    x, y = load_mnist(split="test")
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    results = {"command": "python scripts/mnist_equilibrium_check.py " + " ".join(argv or sys.argv[1:]),
               "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread",
               "date": time.strftime("%Y-%m-%d"), "models": {}}
    for name in a.checkpoints:
        model, _ = load(name)
        if a.max_iter:
            model.solver_kw["max_iter"] = a.max_iter
        t = time.time()
        r = check(model, x, y)
        r["parameters"], r["seconds"] = count_parameters(model), round(time.time() - t, 1)
        results["models"][name] = r
        print(f"{name}: {r['parameters']:,} parameters, {r['n']:,} test images ({r['seconds']:.0f} s)")
        for start, row in r["starts"].items():
            print(f"  from {start:13s} accuracy {row['accuracy']:.2%}  relative residual max "
                  f"{row['rel_residual_max']:.2e} (≤1e-4 on {row['share_rel_le_1e-4']:.2%}), "
                  f"{row['nstep_mean']:.1f} steps")
        print(f"  identical predictions from the {len(STARTS)} starts: {r['identical_predictions']:.2%}")
    accs = [r["starts"][STARTS[0]]["accuracy"] for r in results["models"].values()]
    if len(accs) > 1:
        results["accuracy_mean"], results["accuracy_sd"] = statistics.mean(accs), statistics.stdev(accs)
        print(f"accuracy over {len(accs)} models: {statistics.mean(accs):.2%} ± {statistics.stdev(accs):.2%}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
