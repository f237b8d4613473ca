"""Probes for the maze equilibrium design (docs/mazes.md, "An equilibrium solver that generalises").

    python scripts/maze_probes.py lengths [--sizes 5 9 13 ...] [--count N] [--generator dfs]
        how far information must travel in a maze: path length, the farthest open pixel from the start
        and the goal, and the depth of dead-end filling, in image pixels (2 per layout pixel),
        against the evaluation's default cap of max(100, 4 x image side) iterations
    python scripts/maze_probes.py converge CHECKPOINT --sizes 9 19 33 --count 20 --iters 400 700 600
        a trained checkpoint's solved fraction against iterations, relative residual and convergence
        at a cap per size
"""
from __future__ import annotations

import argparse
import json
import time
from collections import deque

import numpy as np

from deqnca.tasks.maze import generate as mazes


def _bfs(open_, src):
    dist = np.full(open_.shape, -1, dtype=np.int64)
    dist[src] = 0
    todo = deque([src])
    while todo:
        p = todo.popleft()
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (p[0] + d[0], p[1] + d[1])
            if open_[q] and dist[q] < 0:
                dist[q] = dist[p] + 1
                todo.append(q)
    return dist


def dead_end_depth(layout) -> int:
    """Rounds of dead-end filling (every open pixel but start and goal with at most one open, unfilled
    4-neighbour is filled, all at once) until nothing changes: the longest dead-end branch, layout px."""
    kind = layout & mazes.KIND_MASK
    alive = kind != mazes.WALL
    keep = (kind == mazes.START) | (kind == mazes.GOAL)
    rounds = 0
    while True:
        a = alive.astype(np.int8)
        deg = np.zeros_like(a)
        deg[1:] += a[:-1]
        deg[:-1] += a[1:]
        deg[:, 1:] += a[:, :-1]
        deg[:, :-1] += a[:, 1:]
        fill = alive & ~keep & (deg <= 1)
        if not fill.any():
            return rounds
        alive &= ~fill
        rounds += 1


def lengths(layout) -> dict:
    kind = layout & mazes.KIND_MASK
    open_ = kind != mazes.WALL
    s = tuple(np.argwhere(kind == mazes.START)[0])
    g = tuple(np.argwhere(kind == mazes.GOAL)[0])
    ds, dg = _bfs(open_, s), _bfs(open_, g)
    return {"path": int(ds[g]) + 1, "far_s": int(ds.max()), "far_sg": int(np.maximum(ds, dg)[open_].max()),
            "near_sg": int(np.minimum(ds, dg)[open_].max()), "dead_end": dead_end_depth(layout)}


def cmd_lengths(a):
    from deqnca.tasks.maze.evaluate import default_max_iters

    print("| generator | size | image px | cap (4 x side) | path | farthest from S | max(d_S, d_G) | "
          "min(d_S, d_G) | dead-end depth |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in a.sizes:
        lay = mazes.generate_set(size, a.count if size < 100 else max(3, a.count // 4), "test", generator=a.generator)
        r = [lengths(m) for m in lay]
        # image pixels: 2 per layout pixel along a corridor
        stat = {k: (2 * np.mean([x[k] for x in r]), 2 * max(x[k] for x in r)) for k in r[0]}
        rows.append({"size": size, "n": len(r), **{k: v for k, v in stat.items()}})
        cells = " | ".join(f"{m:.0f} (max {M})" for m, M in stat.values())
        print(f"| {a.generator} | {size} | {mazes.image_side(size)} | {default_max_iters(size)} | {cells} |",
              flush=True)
    if a.json:
        print(json.dumps(rows))


def cmd_converge(a):
    import torch

    from deqnca import load
    from deqnca.tasks.maze.evaluate import evaluate_size

    torch.set_num_threads(1)
    model, _ = load(a.checkpoint, "cpu")
    for size, it in zip(a.sizes, a.iters):
        lay = mazes.load_set(size, a.count, "test", cache=a.cache, generator=a.generator)
        t = time.time()
        r = evaluate_size(model, lay, it, "cpu", aa_count=a.aa)
        aa = f"{r['aa_score']:.4f}" if r["aa_score"] is not None else "n/a"
        curve = ", ".join(f"{m}: {100 * v:.0f}%" for m, v in zip(r["curve_iters"], r["curve_accuracy"]))
        print(f"{a.checkpoint} size {size} cap {it}: solved {100 * r['accuracy']:.1f}% of {r['n']}, mean iters "
              f"{r['mean_iters']:.0f}, converged {100 * r['converged_frac']:.0f}%, median rel res "
              f"{r['rel_residual_median']:.2g}, AA {aa} ({time.time() - t:.0f}s)\n    curve {curve}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("lengths")
    q.add_argument("--sizes", type=int, nargs="+", default=[5, 9, 13, 19, 33, 59, 101, 201])
    q.add_argument("--count", type=int, default=40)
    q.add_argument("--generator", default="dfs")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_lengths)
    q = sub.add_parser("converge")
    q.add_argument("checkpoint")
    q.add_argument("--sizes", type=int, nargs="+", default=[9, 19, 33])
    q.add_argument("--count", type=int, default=20)
    q.add_argument("--iters", type=int, nargs="+", default=[400, 700, 600], help="a cap per size")
    q.add_argument("--aa", type=int, default=0)
    q.add_argument("--cache", default=None, help="maze cache folder (default ~/.cache/deqnca/mazes)")
    q.add_argument("--generator", default="dfs")
    q.set_defaults(func=cmd_converge)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
