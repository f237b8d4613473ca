"""The measurements behind docs/nca.md, for each shipped model: accuracy from crops (per anchor and
visible fraction), accuracy and residual against rollout steps, and accuracy per solver at equal
numbers of function evaluations.

    python scripts/nca_measure.py --out results/nca --limit 0          # 0 = full test set
    python scripts/nca_measure.py --models mnist-essay --limit 2000 --max-steps 160
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from deqnca import load
from deqnca.core.resources import shipped_models
from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist import figures as nca_view
from deqnca.tasks.mnist.label_maps import panorama_accuracy


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="checkpoints (default: all shipped)")
    ap.add_argument("--limit", type=int, default=0, help="first N test images for crops (0 = all 10,000)")
    ap.add_argument("--steps-limit", type=int, default=2000, help="first N test images for the step curve")
    ap.add_argument("--solvers-limit", type=int, default=1000, help="first N test images for solver budgets")
    ap.add_argument("--max-steps", type=int, default=160)
    ap.add_argument("--budgets", default="4,8,16,32,64")
    ap.add_argument("--what", default="crops,steps,solvers,panorama")
    ap.add_argument("--canvases", type=int, default=200, help="panoramas per size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/nca")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full_x, full_y = load_mnist(split="test")
    x, y = (full_x[:args.limit], full_y[:args.limit]) if args.limit else (full_x, full_y)
    what = args.what.split(",")
    for path in [Path(p) for p in args.models] if args.models else shipped_models():
        model, _ = load(path, args.device)
        dest = out / f"{path.name}.json"
        rec = {"model": str(path), "n_crops": len(x), "date": str(date.today()),
               "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
               if args.device == "cpu" else torch.cuda.get_device_name(), "args": vars(args)}
        t = time.time()
        if "padded" in what:
            rec["crops_padded"] = nca_view.crop_accuracy(model, x, y, mode="padded")
            print(path.name, "crops padded", json.dumps(rec["crops_padded"]["accuracy"]), flush=True)
            dest.write_text(json.dumps(rec, indent=1))
        if "crops" in what:
            rec["crops"] = nca_view.crop_accuracy(model, x, y)
            print(path.name, "crops", json.dumps(rec["crops"]["accuracy"]), f"{time.time() - t:.0f}s", flush=True)
            dest.write_text(json.dumps(rec, indent=1))
        if "steps" in what:
            rec["steps"] = nca_view.test_time_compute(model, full_x[:args.steps_limit], full_y[:args.steps_limit],
                                                      max_steps=args.max_steps)
            acc = rec["steps"]["accuracy"]
            print(path.name, "steps", {t: round(acc[t], 4) for t in (0, 8, 16, 32, 64, 100, 160) if t < len(acc)},
                  flush=True)
            dest.write_text(json.dumps(rec, indent=1))
        if "solvers" in what:
            n = args.solvers_limit
            rec["solvers"] = nca_view.solver_budgets(model, full_x[:n], full_y[:n],
                                                     budgets=[int(b) for b in args.budgets.split(",")])
            rec["solvers_n"] = n
            print(path.name, "solvers", json.dumps(rec["solvers"]), flush=True)
        if "panorama" in what:
            rec["panorama"] = [panorama_accuracy(model, full_x, full_y, n=args.canvases, size=size, per_canvas=k,
                                                 window=w, seed=0)
                               for size, k in ((84, 3), (140, 6)) for w in (14, 28)]
            print(path.name, "panorama", [(r["size"], r["window"], round(r["accuracy"], 4))
                                          for r in rec["panorama"]], flush=True)
        rec["seconds"] = time.time() - t
        dest.write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
