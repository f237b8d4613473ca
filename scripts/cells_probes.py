"""Short trainings of equilibrium variants of the self-classifying digits, side by side (docs/cells.md,
"What was tried"): each variant is a dict of CellsConfig options over the common ones below.

    OMP_NUM_THREADS=1 python scripts/cells_probes.py --size 14 --steps 400 --train-images 5000 --eval-images 300 \\
        --mark 100 '{"g90": {}, "g97": {"rule": {"gamma": 0.97}, "solver_iter": 150}}'
    OMP_NUM_THREADS=1 python scripts/cells_probes.py --size 28 --steps 300 --eval-images 200 --mark 100 \\
        --solver-iter 60 '{"dil124": {"rule": {"dilations": [1, 2, 4]}}}'

Prints, per variant: held-out cell accuracy and total agreement at step `--mark`, the residual there, and
the training records (step, training cell accuracy, solver steps); runs go to /tmp/cells-probe-<name>.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from deqnca import fit
from deqnca.tasks.cells.config import preset
from deqnca.tasks.cells.task import CellsTask, load_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", help="JSON: {name: {CellsConfig option: value}}")
    ap.add_argument("--size", type=int, default=14, choices=(14, 28))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--train-images", type=int, default=0, help="0: all 60,000")
    ap.add_argument("--eval-images", type=int, default=300)
    ap.add_argument("--mark", type=int, default=100, help="the step the held-out digits are scored at")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--solver-iter", type=int, default=60)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = load_digits(28, a.train_images, a.eval_images)
    for name, kw in json.loads(a.variants).items():
        t = time.time()
        opts = dict(size=a.size, steps=a.steps, lr=a.lr, schedule="constant", train_images=a.train_images,
                    eval_images=a.eval_images, eval_every=0, eval_marks=[a.mark], log_every=50,
                    solver_iter=a.solver_iter)
        opts.update(kw)
        out = f"/tmp/cells-probe-{name}"
        model = opts.pop("model", "equilibrium")
        r = fit(CellsTask(preset(model, **opts), data), out, progress=False, overwrite=True)
        final = r["history"][-1]
        records = [json.loads(line) for line in open(f"{out}/metrics.jsonl") if "solver_steps" in line]
        print(f"{name}: held-out accuracy {final[f'eval_accuracy@{a.mark}']:.3f}, agreement "
              f"{final[f'eval_agreement@{a.mark}']:.3f}, residual {final[f'eval_rel_residual@{a.mark}']:.1e}; "
              f"training (step, accuracy, solver steps) "
              f"{[(h['step'], round(h['train_accuracy'], 3), h['solver_steps']) for h in records]}; "
              f"{time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
