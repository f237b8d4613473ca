"""Where the geodesic models' wrong pixels come from (docs/mazes.md, "The symmetrised read-out").

    python scripts/maze_readout_check.py --checkpoint maze/geodesic --generator dfs \\
        --float64 59=3,12,22,81,106,200,212,252

1. Training mazes (split "train", sizes 5-13, the sets the model was trained on): wrong pixels and mazes
   with the learned read-out alone and with the d4-symmetrised one, from one solve per batch.
2. `--float64 SIZE=i,j,...`: the listed test mazes (e.g. the failures a campaign part recorded) solved in
   float32 and float64: the same wrong pixels in both means the state's rounding is not the cause.

Writes results/mazes/readout-check-<checkpoint name>.json (machine, date, command) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "src")
from deqnca import load  # noqa: E402
from deqnca.engine.hardware import cpu_info  # noqa: E402
from deqnca.tasks.maze import generate as mazes  # noqa: E402
from deqnca.tasks.maze.evaluate import default_max_iters  # noqa: E402
from deqnca.tasks.maze.model import predict, solve_for_eval  # noqa: E402
from deqnca.tasks.maze.task import load_mixed  # noqa: E402


def wrong(model, x, y, z):
    """{symmetry: wrong pixels per maze} for the same fixed point z."""
    out = {}
    for symmetry in ("none", "d4"):
        model.set_readout_symmetry(symmetry)
        out[symmetry] = (predict(model.head(z), x) != y.bool()).flatten(1).sum(1)
    return out


@torch.no_grad()
def training_errors(model, generator, sizes, count, batch=500, cache=None):
    rows = {}
    for size in sizes:
        lay = load_mixed(size, count, "train", generator, cache)
        t0, tot, open_px = time.time(), {s: [0, 0] for s in ("none", "d4")}, 0
        for i in range(0, len(lay), batch):
            x, y = mazes.to_images(torch.as_tensor(lay[i:i + batch]))
            open_px += int((x.amax(1) > 0).sum())
            z, _ = solve_for_eval(model, x, default_max_iters(size, model))
            for s, w in wrong(model, x, y, z).items():
                tot[s][0] += int((w > 0).sum())
                tot[s][1] += int(w.sum())
        rows[size] = {"mazes": len(lay), "open_px": open_px, "seconds": round(time.time() - t0, 1),
                      **{f"{s}_wrong_mazes": v[0] for s, v in tot.items()},
                      **{f"{s}_wrong_px": v[1] for s, v in tot.items()}}
        print(f"train {size}x{size}: {rows[size]}", flush=True)
    return rows


@torch.no_grad()
def float64_check(model, generator, size, indices, cache=None):
    lay = mazes.load_set(size, max(indices) + 1, "test", cache=cache, generator=generator)[indices]
    out = {}
    for dtype in (torch.float32, torch.float64):
        m = model.to(dtype)
        x, y = mazes.to_images(torch.as_tensor(lay))
        x = x.to(dtype)
        z, _ = solve_for_eval(m, x, default_max_iters(size, m))
        out[str(dtype).split(".")[-1]] = {s: w.tolist() for s, w in wrong(m, x, y, z).items()}
    model.float()
    print(f"test {size}x{size} mazes {indices}: wrong px {out}", flush=True)
    return {"size": size, "indices": indices, "wrong_px": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--generator", default="dfs", help="the model's training distribution: dfs ... or mix")
    p.add_argument("--sizes", type=int, nargs="*", default=[5, 7, 9, 11, 13],
                   help="training sizes to check (none: skip)")
    p.add_argument("--count", type=int, default=10000, help="training mazes per size (the shipped models: 10000)")
    p.add_argument("--float64", default="", help="SIZE=i,j,... test mazes to re-solve in float64")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, _ = load(a.checkpoint)
    record = {"checkpoint": a.checkpoint, "generator": a.generator,
              "train": training_errors(model, a.generator, a.sizes, a.count, cache=a.cache)}
    if a.float64:
        size, idx = a.float64.split("=")
        test_gen = "dfs" if a.generator == "mix" else a.generator
        record["float64"] = float64_check(model, test_gen, int(size), [int(i) for i in idx.split(",")], a.cache)
    cpu = cpu_info()
    record.update(command="python scripts/maze_readout_check.py " + " ".join(argv or sys.argv[1:]),
                  machine=f"{cpu['model']}, {cpu['cores']} cores", date=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__)
    out = Path(a.out or f"results/mazes/readout-check-{Path(a.checkpoint).name}.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
