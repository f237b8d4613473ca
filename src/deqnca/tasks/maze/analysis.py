"""Checking and measuring maze layouts: the independent BFS solution, the perfect-maze check, and the
statistics of each generator's distribution (docs/mazes.md "Maze distributions"), also as
`python -m deqnca.tasks.maze.analysis --stats`.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from deqnca.tasks.maze.generate import (
    GENERATORS,
    GOAL,
    KIND_MASK,
    ON_PATH,
    SPLITS,
    START,
    WALL,
    check_size,
    generate_set,
    invalid_layouts,  # noqa: F401  (the vectorised check of a whole set, beside the per-maze ones here)
)

# ---- checking ------------------------------------------------------------------------------------

def bfs_path(layout: np.ndarray) -> np.ndarray:
    """Boolean mask of the shortest start-to-goal path through open layout pixels (independent of
    the generator: used to check that the stored path is *the* solution)."""
    kind = layout & KIND_MASK
    start = tuple(np.argwhere(kind == START)[0])
    goal = tuple(np.argwhere(kind == GOAL)[0])
    prev = {start: None}
    todo = deque([start])
    while todo:
        p = todo.popleft()
        if p == goal:
            break
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (p[0] + d[0], p[1] + d[1])
            if q not in prev and kind[q] != WALL:
                prev[q] = p
                todo.append(q)
    mask = np.zeros(layout.shape, dtype=bool)
    p = goal if goal in prev else None
    while p is not None:
        mask[p] = True
        p = prev[p]
    return mask


def is_perfect(layout: np.ndarray) -> bool:
    """True if the open pixels form a tree spanning every cell (exactly one path between any two)."""
    open_ = (layout & KIND_MASK) != WALL
    side = layout.shape[0]
    n = (side - 1) // 2
    cells = open_[1::2, 1::2]
    if not cells.all() or open_[0].any() or open_[-1].any() or open_[:, 0].any() or open_[:, -1].any():
        return False
    if open_[::2, ::2].any():                        # wall posts between cells are never open
        return False
    passages = int(open_.sum()) - n * n
    if passages != n * n - 1:                        # a tree on n² nodes has n² − 1 edges
        return False
    seen = np.zeros_like(open_)
    todo = [(1, 1)]
    seen[1, 1] = True
    while todo:
        p = todo.pop()
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (p[0] + d[0], p[1] + d[1])
            if open_[q] and not seen[q]:
                seen[q] = True
                todo.append(q)
    return bool(seen[open_].all())


# ---- statistics ----------------------------------------------------------------------------------

def maze_statistics(layouts) -> dict:
    """Per-maze means over a set of layouts (B, L, L) (or one layout): dead ends (cells with one open
    neighbour), branch points (three), four-way crossings (four), each also per cell, and the
    start-to-goal path's length in cells as a fraction of all cells."""
    lay = np.asarray(layouts)
    lay = lay[None] if lay.ndim == 2 else lay
    n = (lay.shape[-1] - 1) // 2
    open_ = (lay & KIND_MASK) != WALL
    # a cell's open neighbours are the open passage pixels above, below, left and right of it
    degree = (open_[:, 0:-2:2, 1::2].astype(np.int64) + open_[:, 2::2, 1::2]
              + open_[:, 1::2, 0:-2:2] + open_[:, 1::2, 2::2])
    counts = {k: (degree == d).sum((1, 2)).mean() for k, d in
              (("dead_ends", 1), ("branch_points", 3), ("crossings", 4))}
    path = ((lay[:, 1::2, 1::2] & ON_PATH) > 0).sum((1, 2))
    cells = n * n
    return {"mazes": len(lay), "cells": cells, **{k: float(v) for k, v in counts.items()},
            **{f"{k}_per_cell": float(v) / cells for k, v in counts.items()},
            "path_cells": float(path.mean()), "path_frac": float(path.mean()) / cells}


def statistics_table(sizes=(9, 19, 59), count: int = 300, generators=None, split: str = "test",
                     seed: int = 0) -> str:
    """Markdown table of `maze_statistics` for every generator and size (the first `count` mazes of
    each set, generated in this process, so ms per maze is the single-process generation time)."""
    rows = ["| generator | size | dead ends / cell | branch points / cell | crossings / cell | "
            "path / cells | path (cells) | ms per maze |", "|---|---|---|---|---|---|---|---|"]
    for g in generators or GENERATORS:
        for s in sizes:
            t = time.perf_counter()
            st = maze_statistics(generate_set(s, count, split, seed, workers=1, generator=g))
            ms = 1000 * (time.perf_counter() - t) / count
            rows.append(f"| {g} | {s} | {st['dead_ends_per_cell']:.3f} | {st['branch_points_per_cell']:.3f} | "
                        f"{st['crossings_per_cell']:.4f} | {st['path_frac']:.3f} | {st['path_cells']:.1f} | "
                        f"{ms:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m deqnca.tasks.maze.analysis",
                                description="statistics of the maze distributions (docs/mazes.md)")
    p.add_argument("--stats", action="store_true", help="print the statistics table (markdown)")
    p.add_argument("--sizes", type=int, nargs="+", default=[9, 19, 59])
    p.add_argument("--count", type=int, default=300, help="mazes per generator and size (default 300)")
    p.add_argument("--generators", nargs="+", choices=list(GENERATORS), default=list(GENERATORS))
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.stats:
        p.error("nothing to do: pass --stats")
    for s in args.sizes:
        try:
            check_size(s)
        except ValueError as e:
            p.error(str(e))
    print(statistics_table(args.sizes, args.count, args.generators, args.split, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
