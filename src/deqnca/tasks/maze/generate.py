"""Perfect mazes as in the easy-to-hard benchmark (Schwarzschild et al. 2021, `make_mazes.py`).

Size convention (checked against aks2203/easy-to-hard-data `make_mazes.py`, which builds the set
named `size` from `maze_size = (size + 1) // 2` cells): a maze of *size s* (odd, s >= 3) has
n = (s + 1) / 2 cells per side; s = 2n - 1 is the cell grid with its inner walls. Drawn with its
outer walls it is the (2n + 1)-grid = (s + 2)-grid ("layout" below); the image upsamples that 2x and
adds a 1-pixel black border, so it is 2(s + 2) + 2 pixels square: 9 -> 24, 59 -> 124, 201 -> 408.

Like the benchmark, the maze is carved by randomised depth-first search starting at the start
cell (the default generator, "dfs"; GENERATORS holds others with other dead-end, branch and path
statistics: Prim, Kruskal, Wilson, recursive division, see docs/mazes.md "Maze distributions");
start and goal are two distinct cells drawn uniformly; each occupies one layout pixel, i.e.
a 2x2 block of the image (green start, red goal); open = white, wall = black. The target is the
per-pixel mask of the unique start-to-goal path through the layout, start and goal included.

Storage: a layout is one uint8 per layout pixel (WALL/OPEN/START/GOAL, plus ON_PATH bit), never
the image; sets are cached as compressed .npz files holding the generator, its version, split,
seed and size and the SHA-256 of the layouts, written atomically, and regenerated (or extended) when
missing, stale or corrupt: layouts that do not match their hash, or that are not valid mazes whose marked
path is their BFS solution (`invalid_layouts`; the hash is only the fast first check), are never
used. Maze i of a set is drawn from its own random stream keyed by (version, split, seed, size, i), so
any prefix of a set is the same whatever the set's length; every generator reads the same stream, so maze i has the
same start and goal in every distribution.

Here: the layout format, the generator registry, the sets, their cache and their encoding as images.
The carving algorithms are in `carvers.py`; the BFS check, the perfect-maze check and the statistics
of each distribution in `analysis.py`.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from deqnca.core.fileio import atomic_write, check_regular_file
from deqnca.tasks.maze.carvers import carve_dfs, carve_division, carve_kruskal, carve_prim, carve_wilson

GENERATOR_VERSION = 1
WALL, OPEN, START, GOAL = 0, 1, 2, 3
ON_PATH = 4                      # bit set on layout pixels of the start-to-goal path
KIND_MASK = 3
TRAIN_SIZE = 9
TEST_SIZES = (9, 13, 19, 33, 59, 101, 201)
DEFAULT_COUNTS = {"train": 50_000, "test": 1_000}
SPLITS = ("train", "test")
MAX_SIZE = 1001                  # a 2008-pixel image; the benchmark's largest is 201
MAX_COUNT = 1_000_000            # mazes in one set
MAX_SET_BYTES = 4 << 30          # layouts of one set in memory


def check_size(size: int) -> int:
    """n, the cells per side of a maze of size `size`; one-line error for a size that is not one."""
    if not isinstance(size, (int, np.integer)) or size < 3 or size % 2 == 0 or size > MAX_SIZE:
        raise ValueError(f"maze size {size!r}: must be an odd integer >= 3 and <= {MAX_SIZE} (size s has (s+1)/2 "
                         "cells per side and a 2(s+2)+2 pixel image, e.g. 9 -> 24 px)")
    return (int(size) + 1) // 2


def layout_side(size: int) -> int:
    return check_size(size) * 2 + 1


def image_side(size: int) -> int:
    return 2 * layout_side(size) + 2


def _rng(split: str, seed: int, size: int, index: int) -> random.Random:
    # str seeds go through SHA-512 in CPython: stable across runs and PYTHONHASHSEED. Every generator
    # reads the same stream, so maze i has the same start and goal in every distribution
    return random.Random(f"deqnca-maze-v{GENERATOR_VERSION}:{split}:{seed}:{size}:{index}")


# ---- generators (the algorithms: carvers.py) ------------------------------------------------------

GENERATORS = {"dfs": carve_dfs, "prim": carve_prim, "kruskal": carve_kruskal, "wilson": carve_wilson,
              "division": carve_division}
# a generator's version is part of its cache files: bump it when its output changes, so stale sets
# are regenerated (dfs stays at GENERATOR_VERSION, which also keys the random streams)
GENERATOR_VERSIONS = {"dfs": GENERATOR_VERSION, "prim": 1, "kruskal": 1, "wilson": 1, "division": 1}
DEFAULT_GENERATOR = "dfs"


def check_generator(name: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"maze generator {name!r}: choose one of {', '.join(GENERATORS)}")
    return name


def generate_maze(size: int, rng: random.Random, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """One maze layout ((s+2) x (s+2) uint8) with start, goal and path marked."""
    n = check_size(size)
    carve = GENERATORS[check_generator(generator)]
    side = 2 * n + 1
    layout = np.zeros((side, side), dtype=np.uint8)
    start, goal = rng.sample(range(n * n), 2)
    parent = carve(n, start, rng)
    cells = np.arange(n * n)
    layout[2 * (cells // n) + 1, 2 * (cells % n) + 1] = OPEN
    child = cells[cells != start]
    par = np.asarray(parent, dtype=np.int64)[child]
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
    split, seed, size, lo, hi, generator = args
    return np.stack([generate_maze(size, _rng(split, seed, size, i), generator) for i in range(lo, hi)])


def generate_set(size: int, count: int, split: str = "test", seed: int = 0, first: int = 0,
                 workers: int = 0, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """Mazes first .. first+count-1 of a set, (count, s+2, s+2) uint8; maze i depends only on
    (generator, split, seed, size, i), so a cached prefix can be extended without regenerating it."""
    check_size(size)
    check_generator(generator)
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    side = layout_side(size)
    if count <= 0:
        return np.zeros((0, side, side), dtype=np.uint8)
    workers = workers or min(os.cpu_count() or 1, 16)
    # process start-up (~0.1 s) only pays off for large sets
    if workers <= 1 or count * side * side < 2_000_000:
        return _generate_range((split, seed, size, first, first + count, generator))
    chunk = -(-count // (4 * workers))
    jobs = [(split, seed, size, lo, min(lo + chunk, first + count), generator)
            for lo in range(first, first + count, chunk)]
    # forkserver, not fork: the caller has torch's threads running, and fork() of a multi-threaded
    # process can deadlock the child (Python 3.12 warns about it)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return np.concatenate(list(pool.map(_generate_range, jobs)))


def default_cache() -> Path:
    return Path(os.environ.get("DEQNCA_MAZE_CACHE", Path.home() / ".cache" / "deqnca" / "mazes"))


def cache_path(cache, split: str, size: int, seed: int, generator: str = DEFAULT_GENERATOR) -> Path:
    # depth-first sets keep the file names they had before there were other generators
    tag = "" if generator == "dfs" else f"{check_generator(generator)}-"
    return Path(cache) / f"mazes-{tag}v{GENERATOR_VERSIONS[generator]}-{split}-size{size}-seed{seed}.npz"


def layouts_digest(layouts: np.ndarray) -> str:
    """The SHA-256 of a set of layouts (its shape and bytes), as stored in a cache file."""
    h = hashlib.sha256(f"{layouts.dtype.str}{tuple(layouts.shape)}".encode())
    h.update(np.ascontiguousarray(layouts).data)
    return h.hexdigest()


def _layouts_shape(path: Path) -> tuple:
    """The shape and dtype a cache file's layouts declare, read from their .npy header (nothing decompressed
    past it), so that a crafted header cannot make `np.load` allocate more than a set may hold."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("layouts.npy")
        if info.file_size > MAX_SET_BYTES + (1 << 16):
            raise ValueError(f"{info.file_size:,} bytes of layouts")
        with z.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
    return tuple(shape), dtype


def _read_cached(path: Path, split: str, size: int, seed: int, generator: str = DEFAULT_GENERATOR) -> np.ndarray | None:
    """The cached layouts, or None (with a warning) when the file is not a regular file, is unreadable, is
    from elsewhere, its layouts do not match the content hash it stores (a fast check), or they are not
    valid mazes (`invalid_layouts`: a hash recomputed over altered layouts does not make them
    valid); the caller then regenerates the set from its seed."""
    try:
        check_regular_file(path)                # a FIFO would block np.load; a device would never end
        shape, dtype = _layouts_shape(path)
        side = layout_side(size)
        if len(shape) != 3 or shape[1:] != (side, side) or dtype != np.uint8 or shape[0] > MAX_COUNT:
            raise ValueError(f"layouts of shape {shape} and type {dtype}")
        with np.load(path, allow_pickle=False) as f:
            # files written before there were other generators have no "generator" entry: depth-first
            made_by = str(f["generator"]) if "generator" in f.files else "dfs"
            meta = (made_by, int(f["version"]), str(f["split"]), int(f["seed"]), int(f["size"]))
            digest = str(f["sha256"]) if "sha256" in f.files else None
            layouts = f["layouts"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        warnings.warn(f"{path}: unreadable maze cache ({type(e).__name__}: {e}); regenerating it", stacklevel=2)
        return None
    expected = (generator, GENERATOR_VERSIONS[generator], split, seed, size)
    if meta != expected or layouts.ndim != 3 or layouts.shape[1:] != (layout_side(size),) * 2:
        warnings.warn(f"{path}: cache holds {meta}, expected {expected}; regenerating it", stacklevel=2)
        return None
    if digest is None:
        warnings.warn(f"{path}: maze cache without a content hash (written by an older deqnca); "
                      "regenerating it", stacklevel=2)
        return None
    if layouts.dtype != np.uint8 or layouts_digest(layouts) != digest:
        warnings.warn(f"{path}: maze cache contents do not match their hash (corrupt); regenerating it",
                      stacklevel=2)
        return None
    bad, why = invalid_layouts(layouts, size)
    if len(bad):
        warnings.warn(f"{path}: {len(bad)} of its {len(layouts)} layouts are not valid mazes ({why}); "
                      "regenerating it", stacklevel=2)
        return None
    return layouts


def _write_cached(path: Path, layouts: np.ndarray, split: str, size: int, seed: int,
                  generator: str = DEFAULT_GENERATOR) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:     # a file object: savez would append ".npz" to a path
            np.savez_compressed(fh, layouts=layouts, generator=generator, version=GENERATOR_VERSIONS[generator],
                                split=split, seed=seed, size=size, sha256=layouts_digest(layouts))
    atomic_write(path, write)


def load_set(size: int, count: int, split: str = "test", seed: int = 0, cache=None,
             log=None, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """The first `count` layouts of a benchmark set, from the cache or generated (and cached)."""
    check_size(size)
    check_generator(generator)
    if count < 1 or count > MAX_COUNT:
        raise ValueError(f"maze count {count}: must be 1 to {MAX_COUNT:,}")
    if count * layout_side(size) ** 2 > MAX_SET_BYTES:
        raise ValueError(f"{count:,} mazes of size {size} would take {count * layout_side(size) ** 2 / 2**30:.0f} GiB "
                         f"(at most {MAX_SET_BYTES >> 30} GiB in one set); ask for fewer")
    path = cache_path(cache or default_cache(), split, size, seed, generator)
    have = _read_cached(path, split, size, seed, generator) if os.path.lexists(path) else None
    if have is not None and len(have) >= count:
        return have[:count]
    have = have if have is not None else np.zeros((0, layout_side(size), layout_side(size)), np.uint8)
    t = time.time()
    extra = generate_set(size, count - len(have), split, seed, first=len(have), generator=generator)
    layouts = np.concatenate([have, extra])
    _write_cached(path, layouts, split, size, seed, generator)
    if log:
        log(f"generated {count - len(have)} {split} mazes of size {size} ({generator}) in "
            f"{time.time() - t:.1f}s -> {path}")
    return layouts


# ---- checking a set (the per-maze BFS and perfect-maze checks: analysis.py) -----------------------

def _trees(passage_h: np.ndarray, passage_v: np.ndarray) -> np.ndarray:
    """Per maze of a batch, whether its open passages join all n² cells into one component (with n² − 1
    passages: a spanning tree). passage_h (B, n, n−1) joins cell (i, j) to (i, j+1), passage_v (B, n−1, n)
    joins (i, j) to (i+1, j). Union-find for the whole batch at once: every root hooks onto the smallest
    root it has an edge to, then every pointer jumps to its root; the components at least halve per round."""
    b, n = passage_h.shape[0], passage_h.shape[1]
    cell = np.arange(b * n * n, dtype=np.int64).reshape(b, n, n)
    u = np.concatenate([cell[:, :, :-1][passage_h], cell[:, :-1, :][passage_v]])
    w = np.concatenate([cell[:, :, 1:][passage_h], cell[:, 1:, :][passage_v]])
    parent = np.arange(b * n * n, dtype=np.int64)
    while True:
        pu, pw = parent[u], parent[w]
        apart = pu != pw
        if not apart.any():
            break
        u, w, pu, pw = u[apart], w[apart], pu[apart], pw[apart]     # edges inside a component are done
        np.minimum.at(parent, np.maximum(pu, pw), np.minimum(pu, pw))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots = parent.reshape(b, n * n)
    return (roots == roots[:, :1]).all(axis=1)


def invalid_layouts(layouts: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """(indices of the layouts that are not valid mazes of size `size`, why the first of them is not).

    A valid layout, as `generate_maze` makes every one (vectorised over the set, so a cache of tens of
    thousands of mazes is checked in about a second): codes WALL/OPEN/START/GOAL with the ON_PATH bit only on
    open pixels; walls all round and on every post between cells; every cell open; one START and one GOAL,
    on cells; a perfect maze (n² − 1 open passages joining all n² cells: a spanning tree); and the ON_PATH
    pixels are exactly the start-to-goal path, i.e. `bfs_path(layout)`: in a tree, a set of open pixels in
    which start and goal have one marked neighbour and every other marked pixel two is that unique path."""
    n = check_size(size)
    lay = np.asarray(layouts)
    if lay.ndim != 3 or lay.shape[1:] != (2 * n + 1, 2 * n + 1) or lay.dtype != np.uint8:
        return np.arange(len(lay)), f"not an array of ({2 * n + 1}, {2 * n + 1}) uint8 layouts"
    kind, on = lay & KIND_MASK, (lay & ON_PATH) > 0
    checks = []                                 # (per-layout ok, what is wrong otherwise)
    checks.append(((lay < 8).all(axis=(1, 2)) & ~((kind == WALL) & on).any(axis=(1, 2)),
                   "a pixel code that is not wall, open, start or goal, or a wall marked as path"))
    border = np.concatenate([kind[:, 0], kind[:, -1], kind[:, :, 0], kind[:, :, -1]], axis=1)
    checks.append(((border == WALL).all(axis=1) & (kind[:, ::2, ::2] == WALL).all(axis=(1, 2)),
                   "an open pixel on the outer wall or on a post between cells"))
    checks.append(((kind[:, 1::2, 1::2] != WALL).all(axis=(1, 2)), "a cell that is a wall"))
    h, v = kind[:, 1::2, 2:-1:2], kind[:, 2:-1:2, 1::2]
    checks.append((((h == WALL) | (h == OPEN)).all(axis=(1, 2)) & ((v == WALL) | (v == OPEN)).all(axis=(1, 2)),
                   "a start or goal between cells"))
    checks.append((((kind == START).sum(axis=(1, 2)) == 1) & ((kind == GOAL).sum(axis=(1, 2)) == 1),
                   "not exactly one start and one goal"))
    h, v = h != WALL, v != WALL
    passages = h.sum(axis=(1, 2)) + v.sum(axis=(1, 2))
    checks.append((passages == n * n - 1, f"not a perfect maze ({n * n - 1} passages join its {n * n} cells)"))
    # the path: start and goal with one marked neighbour, every other marked pixel with two
    pad = np.pad(on, ((0, 0), (1, 1), (1, 1)))
    degree = (pad[:, :-2, 1:-1].astype(np.int8) + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:])
    ends = (kind == START) | (kind == GOAL)
    checks.append(((on | ~ends).all(axis=(1, 2)) & ~(on & ends & (degree != 1)).any(axis=(1, 2))
                   & ~(on & ~ends & (degree != 2)).any(axis=(1, 2)),
                   "its marked path is not a path from start to goal"))
    ok = np.ones(len(lay), dtype=bool)
    why = ""
    for good, what in checks:
        if not why and not good.all():
            why = f"maze {int(np.argmin(good))}: {what}"
        ok &= good
    if ok.any():                                # connectivity last, on the layouts that passed the rest
        tree = np.zeros(len(lay), dtype=bool)
        tree[ok] = _trees(h[ok], v[ok])
        if not why and not tree[ok].all():
            why = f"maze {int(np.flatnonzero(ok & ~tree)[0])}: not a perfect maze (its cells are not all connected)"
        ok &= tree
    return np.flatnonzero(~ok), why


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
