"""`maze eval` with the wavefront solver against fixed_point, per size, one thread: is the wavefront the faster
default from 9×9 up?

    PYTHONPATH=src python benchmarks/wavefront_eval.py --model maze/geodesic --no-curve
    PYTHONPATH=src python benchmarks/wavefront_eval.py --model trace-hand --json wavefront_eval_trace.json

Runs `evaluate_size` (accuracy, AA score on `--aa-count` mazes, residuals) on the first depth-first test mazes of
each size with each solver and prints the CPU seconds of this process per maze (the honest number on a shared
machine) and their ratio; the accuracies, the curve and the AA score must agree (checked). `--no-curve` reads out
only at the end, as `maze eval --no-curve`. `--model`: a maze checkpoint or shipped name, or "trace-hand"
(benchmarks/maze_801.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SIZES = "9=200,13=100,19=50,33=20,59=6"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="maze/geodesic")
    ap.add_argument("--sizes", default=SIZES, help=f"SIZE=COUNT pairs (default {SIZES})")
    ap.add_argument("--aa-count", type=int, default=4)
    ap.add_argument("--no-curve", action="store_true")
    ap.add_argument("--json", help="file name in results/mazes/, or a path")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from deqnca import load
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze.evaluate import default_max_iters, evaluate_size
    from maze_801 import hand_set_trace_model

    model = hand_set_trace_model() if a.model == "trace-hand" else load(a.model, kind="maze")[0]
    rows, ok = {}, True
    for part in a.sizes.split(","):
        size, count = (int(v) for v in part.split("="))
        layouts = mazes.generate_set(size, count)
        runs = {}
        for solver in ("wavefront", "fixed_point"):
            cpu = time.process_time()
            r = evaluate_size(model, layouts, default_max_iters(size, model), aa_count=a.aa_count, solver=solver,
                              curve=not a.no_curve)
            runs[solver] = {"cpu_ms_per_maze": 1000 * (time.process_time() - cpu) / count, "accuracy": r["accuracy"],
                            "curve_accuracy": r["curve_accuracy"], "aa_score": r["aa_score"],
                            "mean_iters": r["mean_iters"]}
        w, p = runs["wavefront"], runs["fixed_point"]
        same = all(w[k] == p[k] for k in ("accuracy", "curve_accuracy", "aa_score"))
        ok &= same
        rows[size] = {"count": count, **runs, "speedup": p["cpu_ms_per_maze"] / w["cpu_ms_per_maze"], "same": same}
        print(f"{size}x{size} ({count} mazes): wavefront {w['cpu_ms_per_maze']:.1f} ms, fixed_point "
              f"{p['cpu_ms_per_maze']:.1f} ms per maze (CPU), {rows[size]['speedup']:.1f}x; the same answers {same}",
              flush=True)
    if a.json:
        out = Path(a.json) if "/" in a.json else Path("results/mazes") / a.json
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": a.model, "curve": not a.no_curve, "aa_count": a.aa_count, "threads": 1,
                                   "rows": rows, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
                                  indent=1) + "\n")
        print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
