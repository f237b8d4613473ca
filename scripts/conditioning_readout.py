"""Issue 3, points 5(b) and 6, at equal budget: how the input enters, and a model trained per cell.

Three models of the equilibrium family (contractive tanh rule, Anderson + implicit gradient, the
same 15,402 parameters), trained with the same data, seed and number of steps:

  injection   σ(W_u*u + W_z*z + b)        (identical in value to read-only input channels)
  additive    σ(W_z*z + b) + W_u*u        (input added after the nonlinearity, residual-style)
  cell        injection, read out per cell and trained with per-cell targets (self-classifying MNIST)

For each: test accuracy, solver steps and residual, rollout stability from noise (share of images
within 1e-3 of equilibrium after `--rollout-steps` plain steps, and the accuracy there), and
per-digit accuracy on the panorama benchmark (local read-out).

    python scripts/conditioning_readout.py --train-subset 9600 --out results/nca/conditioning
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from deqnca.core.nca import rollout_curve
from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.evaluate import evaluate, residual_summary
from deqnca.tasks.mnist.label_maps import panorama_accuracy
from deqnca.tasks.mnist.model import count_parameters
from deqnca.tasks.mnist.task import train

VARIANTS = {
    "injection": {"conditioning": "injection"},
    "additive": {"conditioning": "additive"},
    "cell": {"conditioning": "injection", "readout": "cell"},
}


def step_time(model, x, conditioning: str, repeats: int = 20) -> float:
    """Seconds per rule evaluation with the given conditioning (same weights)."""
    from deqnca.core.conditioning import make_conditioning

    with torch.no_grad():
        f = model.rule.bind(model.encode(x), make_conditioning(conditioning))
        z = torch.randn(x.shape[0], model.config.state_channels, *x.shape[2:], device=x.device)
        f(z)
        t = time.perf_counter()
        for _ in range(repeats):
            z = f(z)
        return (time.perf_counter() - t) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train-subset", type=int, default=9600)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--rollout-steps", type=int, default=100)
    ap.add_argument("--canvases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/nca/conditioning")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = load_mnist(split="train")
    x_te, y_te = load_mnist(split="test")
    xs, ys = x_te[:args.test_limit], y_te[:args.test_limit]
    machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if args.device == "cpu"
               else torch.cuda.get_device_name())
    results = {"date": str(date.today()), "machine": f"{machine}, torch {torch.__version__}", "args": vars(args),
               "runs": {}}
    for name in args.variants.split(","):
        cfg = preset("equilibrium", VARIANTS[name], epochs=args.epochs, train_subset=args.train_subset,
                     test_subset=500, seed=args.seed)
        t = time.time()
        run = train(cfg.model, cfg, out / "runs" / name, (x_tr, y_tr, x_te, y_te), device=args.device)
        model = run["model"].eval()
        ev = evaluate(model, xs.to(args.device), ys, seed=1)
        curve = rollout_curve(model, xs[:500].to(args.device), ys[:500], args.rollout_steps, seed=2)
        rec = {"parameters": count_parameters(model), "train_time_s": time.time() - t,
               "test_acc": ev["accuracy"], "n": ev["n"], "solver_steps": ev["nstep_mean"],
               **residual_summary(ev["rel_residual"]),
               "rollout_steps": args.rollout_steps,
               "rollout_frac_below_1e-3": curve["frac_below_1e-3"][-1],
               "rollout_acc": curve["accuracy"][-1],
               "rollout_first_step_all_below_1e-3": next(
                   (t for t, v in enumerate(curve["frac_below_1e-3"]) if v >= 0.99), None),
               "panorama": [panorama_accuracy(model, x_te, y_te, n=args.canvases, size=s, per_canvas=k,
                                              window=w, seed=0)
                            for s, k in ((84, 3), (140, 6)) for w in ((1,) if name == "cell" else (14, 28))]}
        if name == "injection":
            xb = xs[:64].to(args.device)
            rec["seconds_per_step"] = {c: step_time(model, xb, c) for c in ("injection", "readonly")}
        results["runs"][name] = rec
        print(name, json.dumps({k: v for k, v in rec.items() if k != "panorama"}), flush=True)
        print(name, "panorama", [(r["size"], r["window"], round(r["accuracy"], 4)) for r in rec["panorama"]],
              flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
