"""The statistics of maze specs (loops.py): per spec and size, the changes it took to reach a unique shortest
path, the path's length, how often loops changed the path, the cells the start cannot reach, the loops.

    python -m deqnca.tasks.maze.loop_statistics --sizes 9 19 59 --count 300
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from deqnca.tasks.maze.loops import (
    MAX_ATTEMPTS,
    SYNTAX,
    components,
    draw_accepted,
    parse_spec,
    spec_rng,
    tree_path,
)


def spec_statistics(spec, size: int, count: int = 300, split: str = "test", seed: int = 0) -> dict:
    """Means over mazes 0 .. count-1 of `spec` (drawn from `spec_rng`, so for a non-perfect spec the mazes of
    its set; a perfect spec's set has other streams, the same distribution): `rejected` (per maze, the draws
    discarded and walls closed to reach a unique shortest path: `draw_accepted`), `path_cells`, `changed`
    (the fraction whose path is not the path of the tree before the openings; NaN for percolation),
    `unreachable` (the fraction of cells the start cannot reach), `cycle_rank` (independent loops: passages
    - cells + components) and `ms` per maze."""
    spec, n = parse_spec(spec), (size + 1) // 2
    t, rows = time.perf_counter(), []
    for i in range(count):
        (start, goal, h, v, parent), path, rejected = draw_accepted(n, spec_rng(spec, split, seed, size, i), spec)
        ph = np.frombuffer(bytes(h), np.uint8).reshape(1, n, n)[:, :, :-1] > 0
        pv = np.frombuffer(bytes(v), np.uint8).reshape(1, n, n)[:, :-1] > 0
        comp = components(ph, pv)[0]
        changed = np.nan if parent is None else tree_path(parent, start, goal) != path     # percolation: no tree
        rows.append((rejected, len(path), changed, (comp != comp[start]).mean(),
                     ph.sum() + pv.sum() - n * n + len(np.unique(comp))))
    r = np.array(rows, dtype=np.float64)
    return {"spec": spec.name, "size": size, "mazes": count, "rejected": r[:, 0].mean(),
            "path_cells": r[:, 1].mean(), "changed": r[:, 2].mean(), "unreachable": r[:, 3].mean(),
            "cycle_rank": r[:, 4].mean(), "ms": 1000 * (time.perf_counter() - t) / count}


DEFAULT_SPECS = ("dfs", "dfs+anywhere", "dfs+loops=0.05", "dfs+loops=0.2", "dfs+loops=0.05+anywhere",
                 "prim+loops=0.05", "wilson+loops=0.05", "percolation+p=0.6", "percolation+p=0.3")


def statistics_table(sizes=(9, 19, 59), count: int = 300, specs=None, split: str = "test", seed: int = 0) -> str:
    """Markdown table of `spec_statistics` for every spec and size; a spec that gives up at a size says so."""
    rows = ["| spec | size | changes per maze (walls closed, draws discarded) | path (cells) | path changed by loops "
            "| unreachable cells | cycle rank | ms per maze |", "|---|---|---|---|---|---|---|---|"]
    for spec in specs or DEFAULT_SPECS:
        for s in sizes:
            try:
                st = spec_statistics(spec, s, count, split, seed)
            except ValueError:
                rows.append(f"| {parse_spec(spec).name} | {s} | all of {MAX_ATTEMPTS} draws of a maze: gave up |"
                            " | | | | |")
                continue
            changed = "-" if np.isnan(st["changed"]) else f"{st['changed']:.3f}"
            rows.append(f"| {st['spec']} | {s} | {st['rejected']:.2f} | {st['path_cells']:.1f} | {changed} | "
                        f"{st['unreachable']:.3f} | {st['cycle_rank']:.1f} | {st['ms']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:

    p = argparse.ArgumentParser(prog="python -m deqnca.tasks.maze.loops",
                                description="statistics of maze specs: loops, percolation, starts anywhere")
    p.add_argument("--sizes", type=int, nargs="+", default=[9, 19, 59])
    p.add_argument("--count", type=int, default=300, help="mazes per spec and size (default 300)")
    p.add_argument("--specs", nargs="+", default=None, help=f"maze specs ({SYNTAX}); default: a selection")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in args.specs] if args.specs else None
    except ValueError as e:
        p.error(str(e))
    if any(s < 3 or s % 2 == 0 for s in args.sizes) or args.count < 1:
        p.error("sizes are odd integers >= 3 (size s has (s+1)/2 cells per side); count is at least 1")
    print(statistics_table(args.sizes, args.count, specs, args.split, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
