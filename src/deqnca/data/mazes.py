"""Perfect mazes as in the easy-to-hard benchmark (Schwarzschild et al. 2021, `make_mazes.py`).

Size convention (checked against aks2203/easy-to-hard-data `make_mazes.py`, which builds the set
named `size` from `maze_size = (size + 1) // 2` cells): a maze of *size s* (odd, s >= 3) has
n = (s + 1) / 2 cells per side; s = 2n - 1 is the cell grid with its inner walls. Drawn with its
outer walls it is the (2n + 1)-grid = (s + 2)-grid ("layout" below); the image upsamples that 2x and
adds a 1-pixel black border, so it is 2(s + 2) + 2 pixels square: 9 -> 24, 59 -> 124, 201 -> 408.

Like the benchmark, the maze is carved by randomised depth-first search starting at the start
cell; start and goal are two distinct cells drawn uniformly; each occupies one layout pixel, i.e.
a 2x2 block of the image (green start, red goal); open = white, wall = black. The target is the
per-pixel mask of the unique start-to-goal path through the layout, start and goal included.

Storage: a layout is one uint8 per layout pixel (WALL/OPEN/START/GOAL, plus ON_PATH bit), never
the image; sets are cached as compressed .npz files holding the generator version, split, seed
and size, and regenerated (or extended) when missing, stale or corrupt. Maze i of a set is drawn
from its own random stream keyed by (version, split, seed, size, i), so any prefix of a set is
the same whatever the set's length.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import time
import warnings
import zipfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..fileio import atomic_write

GENERATOR_VERSION = 1
WALL, OPEN, START, GOAL = 0, 1, 2, 3
ON_PATH = 4                      # bit set on layout pixels of the start-to-goal path
KIND_MASK = 3
TRAIN_SIZE = 9
TEST_SIZES = (9, 13, 19, 33, 59, 101, 201)
DEFAULT_COUNTS = {"train": 50_000, "test": 1_000}
SPLITS = ("train", "test")


def check_size(size: int) -> int:
    """n, the cells per side of a maze of size `size`; one-line error for a size that is not one."""
    if not isinstance(size, (int, np.integer)) or size < 3 or size % 2 == 0:
        raise ValueError(f"maze size {size!r}: must be an odd integer >= 3 (size s has (s+1)/2 cells "
                         "per side and a 2(s+2)+2 pixel image, e.g. 9 -> 24 px)")
    return (int(size) + 1) // 2


def layout_side(size: int) -> int:
    return check_size(size) * 2 + 1


def image_side(size: int) -> int:
    return 2 * layout_side(size) + 2


def _rng(split: str, seed: int, size: int, index: int) -> random.Random:
    # str seeds go through SHA-512 in CPython: stable across runs and PYTHONHASHSEED
    return random.Random(f"deqnca-maze-v{GENERATOR_VERSION}:{split}:{seed}:{size}:{index}")


def generate_maze(size: int, rng: random.Random) -> np.ndarray:
    """One maze layout ((s+2) x (s+2) uint8) with start, goal and path marked."""
    n = check_size(size)
    side = 2 * n + 1
    layout = np.zeros((side, side), dtype=np.uint8)
    start, goal = rng.sample(range(n * n), 2)
    # randomised DFS on the n x n cell graph (flat indices); parent[c] is the cell c was carved from,
    # so the carving tree is rooted at the start and the path is the goal's chain of parents
    parent = [-1] * (n * n)
    visited = bytearray(n * n)
    visited[start] = 1
    stack = [start]
    carved = []                  # (cell, parent) pairs, turned into open layout pixels below
    while stack:
        c = stack[-1]
        r, q = divmod(c, n)
        options = []
        if r > 0 and not visited[c - n]:
            options.append(c - n)
        if r < n - 1 and not visited[c + n]:
            options.append(c + n)
        if q > 0 and not visited[c - 1]:
            options.append(c - 1)
        if q < n - 1 and not visited[c + 1]:
            options.append(c + 1)
        if not options:
            stack.pop()
            continue
        nxt = options[rng.randrange(len(options))] if len(options) > 1 else options[0]
        visited[nxt] = 1
        parent[nxt] = c
        carved.append(nxt)
        stack.append(nxt)
    cells = np.arange(n * n)
    layout[2 * (cells // n) + 1, 2 * (cells % n) + 1] = OPEN
    child = np.asarray(carved, dtype=np.int64)
    par = np.asarray([parent[c] for c in carved], dtype=np.int64)
    # the wall between a cell and its parent sits at the midpoint of their layout pixels
    layout[(child // n + par // n) + 1, (child % n + par % n) + 1] = OPEN
    path, c = [goal], goal
    while c != start:
        mid = ((c // n + parent[c] // n) + 1, (c % n + parent[c] % n) + 1)
        layout[mid] |= ON_PATH
        c = parent[c]
        path.append(c)
    path = np.asarray(path)
    layout[2 * (path // n) + 1, 2 * (path % n) + 1] |= ON_PATH
    layout[2 * (start // n) + 1, 2 * (start % n) + 1] = START | ON_PATH
    layout[2 * (goal // n) + 1, 2 * (goal % n) + 1] = GOAL | ON_PATH
    return layout


def _generate_range(args) -> np.ndarray:
    split, seed, size, lo, hi = args
    return np.stack([generate_maze(size, _rng(split, seed, size, i)) for i in range(lo, hi)])


def generate_set(size: int, count: int, split: str = "test", seed: int = 0, first: int = 0,
                 workers: int = 0) -> np.ndarray:
    """Mazes first .. first+count-1 of a set, (count, s+2, s+2) uint8; maze i depends only on
    (split, seed, size, i), so a cached prefix can be extended without regenerating it."""
    check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    side = layout_side(size)
    if count <= 0:
        return np.zeros((0, side, side), dtype=np.uint8)
    workers = workers or min(os.cpu_count() or 1, 16)
    # process start-up (~0.1 s) only pays off for large sets
    if workers <= 1 or count * side * side < 2_000_000:
        return _generate_range((split, seed, size, first, first + count))
    chunk = -(-count // (4 * workers))
    jobs = [(split, seed, size, lo, min(lo + chunk, first + count)) for lo in range(first, first + count, chunk)]
    # forkserver, not fork: the caller has torch's threads running, and fork() of a multi-threaded
    # process can deadlock the child (Python 3.12 warns about it)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return np.concatenate(list(pool.map(_generate_range, jobs)))


def default_cache() -> Path:
    return Path(os.environ.get("DEQNCA_MAZE_CACHE", Path.home() / ".cache" / "deqnca" / "mazes"))


def cache_path(cache, split: str, size: int, seed: int) -> Path:
    return Path(cache) / f"mazes-v{GENERATOR_VERSION}-{split}-size{size}-seed{seed}.npz"


def _read_cached(path: Path, split: str, size: int, seed: int) -> np.ndarray | None:
    """The cached layouts, or None (with a warning) when the file is unreadable or from elsewhere."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = (int(f["version"]), str(f["split"]), int(f["seed"]), int(f["size"]))
            layouts = f["layouts"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        warnings.warn(f"{path}: unreadable maze cache ({type(e).__name__}); regenerating it")
        return None
    if meta != (GENERATOR_VERSION, split, seed, size) or layouts.shape[1:] != (layout_side(size),) * 2:
        warnings.warn(f"{path}: cache holds {meta}, expected {(GENERATOR_VERSION, split, seed, size)}; "
                      "regenerating it")
        return None
    return layouts


def _write_cached(path: Path, layouts: np.ndarray, split: str, size: int, seed: int) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:     # a file object: savez would append ".npz" to a path
            np.savez_compressed(fh, layouts=layouts, version=GENERATOR_VERSION, split=split, seed=seed, size=size)
    atomic_write(path, write)


def load_set(size: int, count: int, split: str = "test", seed: int = 0, cache=None,
             log=None) -> np.ndarray:
    """The first `count` layouts of a benchmark set, from the cache or generated (and cached)."""
    check_size(size)
    if count < 1:
        raise ValueError(f"maze count {count}: must be >= 1")
    path = cache_path(cache or default_cache(), split, size, seed)
    have = _read_cached(path, split, size, seed) if path.exists() else None
    if have is not None and len(have) >= count:
        return have[:count]
    have = have if have is not None else np.zeros((0, layout_side(size), layout_side(size)), np.uint8)
    t = time.time()
    extra = generate_set(size, count - len(have), split, seed, first=len(have))
    layouts = np.concatenate([have, extra])
    _write_cached(path, layouts, split, size, seed)
    if log:
        log(f"generated {count - len(have)} {split} mazes of size {size} in {time.time() - t:.1f}s -> {path}")
    return layouts


# ---- encoding ------------------------------------------------------------------------------------

PALETTE = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float32)  # wall open start goal


def to_images(layouts):
    """(images (B, 3, H, W) float32, path masks (B, H, W) int64) from layouts (B, L, L) uint8.

    Works on numpy arrays or torch tensors (on any device, so large sets are encoded per batch on
    the GPU instead of being stored as images).
    """
    import torch
    import torch.nn.functional as F

    lay = torch.as_tensor(layouts)
    palette = torch.as_tensor(PALETTE, device=lay.device)
    kind = (lay & KIND_MASK).long()
    img = palette[kind].permute(0, 3, 1, 2)
    img = img.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    path = ((lay & ON_PATH) > 0).long().repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    return F.pad(img, (1, 1, 1, 1)), F.pad(path, (1, 1, 1, 1))


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
