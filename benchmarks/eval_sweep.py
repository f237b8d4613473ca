"""How fast the shipped MNIST models evaluate on this CPU: batch size, layout, threads, and the
equilibrium model's stopping tolerance against its accuracy.

    python benchmarks/eval_sweep.py --json-out /tmp/eval_sweep.json
    python benchmarks/eval_sweep.py --images 200 --tols 1e-4,1e-3 --batches 50 --threads 1   # short

Timing: each (model, batch, layout, threads, precision) evaluates `--images` test images, twice, the
second sweep in reverse order so that a drift in the machine's load hits early and late configurations
alike; reported per 1,000 images (median of the two) with the load average. Tolerance: accuracy, mean
Picard steps and residuals of the tolerance-solved model on `--tol-images` test images per tolerance,
on one path (--tol-path), float32 and bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from deqnca import load
from deqnca.core.resources import models_dir
from deqnca.data.idx import load_mnist
from deqnca.engine import hardware
from deqnca.tasks.mnist.evaluate import evaluate, residual_summary

ROOT = Path(__file__).resolve().parents[1]


def run_eval(model, x, y, batch, channels_last, threads, amp="off", **solve_kw):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        ev = evaluate(model, x, y, batch_size=batch, seed=0, channels_last="on" if channels_last else "off",
                      amp=amp, **solve_kw)
        return time.perf_counter() - t, ev
    finally:
        torch.set_num_threads(previous)


def timing_rows(models, x, y, batches, threads, layouts, amps):
    configs = [(m, b, cl, t, a) for m in models for a in amps for b in batches for cl in layouts for t in threads]
    samples = {c: [] for c in configs}
    steps, acc, loads = {}, {}, {c: [] for c in configs}
    for order in (configs, configs[::-1]):
        for c in order:
            name, b, cl, t, a = c
            s, ev = run_eval(models[name], x, y, b, cl, t, a)
            samples[c].append(s)
            steps[c], acc[c] = ev["nstep_mean"], ev["accuracy"]
            loads[c].append(os.getloadavg()[0])
    return [dict(model=c[0], batch=c[1], layout="channels-last" if c[2] else "NCHW", threads=c[3], amp=c[4],
                 s_per_1000=statistics.median(samples[c]) * 1000 / len(x), samples_s=samples[c],
                 nstep_mean=steps[c], accuracy=acc[c], load=round(statistics.mean(loads[c]), 2)) for c in configs]


def tolerance_rows(model, x, y, tols, path, amps):
    b, cl, t = path
    rows = []
    for a in amps:
        for tol in tols:
            s, ev = run_eval(model, x, y, b, cl, t, a, tol=tol)
            res = residual_summary(ev["rel_residual"])
            rows.append(dict(tol=tol, amp=a, accuracy=ev["accuracy"], n=ev["n"], nstep_mean=ev["nstep_mean"],
                             s_per_1000=s * 1000 / len(x), rel_median=res["rel_median"], rel_max=res["rel_max"],
                             load=round(os.getloadavg()[0], 2)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500, help="test images per timed configuration and sweep")
    ap.add_argument("--batches", default="50,200,500")
    ap.add_argument("--threads", default=None, help="comma list (default: 1 and all usable cores)")
    ap.add_argument("--amps", default="off", help="precisions to time: off, bf16 or off,bf16")
    ap.add_argument("--tols", default="1e-4,3e-4,1e-3,3e-3", help="the equilibrium model's stopping tolerances")
    ap.add_argument("--tol-images", type=int, default=1000)
    ap.add_argument("--tol-path", default="50,cl,1", help="batch,layout(cl|nchw),threads for the tolerance runs")
    ap.add_argument("--tol-amps", default="off,bf16")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    info = hardware.cpu_info()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, info["usable_cores"]})
    batches = [int(b) for b in args.batches.split(",")]
    models = {n: load(models_dir() / f"mnist-{n}", "cpu")[0] for n in ("essay", "equilibrium")}
    x, y = load_mnist(split="test")
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = timing_rows(models, x[:args.images], y[:args.images], batches, threads, (False, True),
                       args.amps.split(",")) if args.images else []
    b, layout, t = args.tol_path.split(",")
    tol_path = (int(b), layout == "cl", int(t))
    tols = [float(v) for v in args.tols.split(",")] if args.tols else []
    tol = tolerance_rows(models["equilibrium"], x[:args.tol_images], y[:args.tol_images], tols, tol_path,
                         args.tol_amps.split(",")) if tols else []
    result = {"date": date.today().isoformat(), "cpu": info, "load_start": load_start,
              "load_end": [round(v, 2) for v in os.getloadavg()], "timing": rows, "tolerance": tol,
              "tol_path": args.tol_path, "images": args.images, "tol_images": args.tol_images}

    print(f"{info['model']}, torch {info['torch']}, {result['date']}; load {load_start} → {result['load_end']}")
    if rows:
        print(f"\nSeconds per 1,000 test images (median of 2 sweeps over {args.images} images):\n")
        print("| model | precision | batch | layout | threads | s / 1,000 | steps | accuracy | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['amp']} | {r['batch']} | {r['layout']} | {r['threads']} | "
                  f"{r['s_per_1000']:.1f} | {r['nstep_mean']:.1f} | {100 * r['accuracy']:.1f}% | {r['load']:.1f} |")
    if tol:
        print(f"\nEquilibrium model, stopping tolerance (first {args.tol_images} test images, path {args.tol_path}):\n")
        print("| tol | precision | accuracy | mean steps | s / 1,000 | residual median | max | load |")
        print("|---|---|---|---|---|---|---|---|")
        for r in tol:
            print(f"| {r['tol']:g} | {r['amp']} | {100 * r['accuracy']:.2f}% | {r['nstep_mean']:.1f} | "
                  f"{r['s_per_1000']:.1f} | {r['rel_median']:.1e} | {r['rel_max']:.1e} | {r['load']:.1f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
