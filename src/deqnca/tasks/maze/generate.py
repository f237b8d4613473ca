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

A set is named by a maze spec: a generator name (the perfect sets above) or one with loops, unreachable
regions or starts anywhere (`dfs+loops=0.05`, `percolation+p=0.6`, loops.py), with their own streams.

Here: the layout format, the generator registry, the sets, their cache and their encoding as images.
The carving algorithms are in `carvers.py`, the specs in `loops.py`; the BFS check, the perfect-maze
check and the statistics of each distribution in `analysis.py`.
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
from deqnca.tasks.maze import loops
from deqnca.tasks.maze.carvers import CARVERS

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

GENERATORS = CARVERS             # the perfect generators by name (carvers.py)
# a generator's version is part of its cache files: bump it when its output changes, so stale sets
# are regenerated (dfs stays at GENERATOR_VERSION, which also keys the random streams)
GENERATOR_VERSIONS = {"dfs": GENERATOR_VERSION, "prim": 1, "kruskal": 1, "wilson": 1, "division": 1}
DEFAULT_GENERATOR = "dfs"


def check_generator(name: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"maze generator {name!r}: choose one of {', '.join(GENERATORS)}")
    return name


def spec_identity(generator) -> tuple[str, int]:
    """(canonical name, version) of a maze spec (a string or `loops.MazeSpec`): a perfect generator's
    name and GENERATOR_VERSIONS entry, or any other spec's canonical name and loops.LOOPS_VERSION."""
    name = str(generator)
    if name in GENERATORS:
        return name, GENERATOR_VERSIONS.get(name, GENERATOR_VERSION)
    spec = loops.parse_spec(generator)
    return (spec.name, GENERATOR_VERSIONS[spec.name]) if spec.perfect else (spec.name, loops.LOOPS_VERSION)


def _layout(n: int, h, v, path: list) -> np.ndarray:
    """The layout of a maze of open walls h, v and a start-to-goal path of cells, goal first (`loops.pixels`)."""
    open_, on = loops.pixels(n, h, v, path)
    layout = open_.astype(np.uint8) * OPEN | on.astype(np.uint8) * ON_PATH
    layout[2 * (path[-1] // n) + 1, 2 * (path[-1] % n) + 1] = START | ON_PATH
    layout[2 * (path[0] // n) + 1, 2 * (path[0] % n) + 1] = GOAL | ON_PATH
    return layout


def generate_maze(size: int, rng: random.Random, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """One perfect maze layout ((s+2) x (s+2) uint8) with start, goal and path marked."""
    n, carve = check_size(size), GENERATORS[check_generator(generator)]
    start, goal = rng.sample(range(n * n), 2)
    parent = carve(n, start, rng)
    return _layout(n, *loops.tree_walls(n, parent), loops.tree_path(parent, start, goal))


def _generate_range(args) -> np.ndarray:
    split, seed, size, lo, hi, generator = args
    return np.stack([generate_maze(size, _rng(split, seed, size, i), generator) for i in range(lo, hi)])


def _loop_range(args) -> tuple[np.ndarray, np.ndarray]:
    split, seed, size, lo, hi, name = args
    spec, n, out = loops.parse_spec(name), check_size(size), []
    for i in range(lo, hi):
        (_, _, h, v, _), path, rejected = loops.draw_accepted(n, loops.spec_rng(spec, split, seed, size, i), spec)
        out.append((_layout(n, h, v, path), rejected))
    return np.stack([lay for lay, _ in out]), np.array([r for _, r in out], dtype=np.int32)


def _in_spans(fn, job, first: int, count: int, size: int, workers: int) -> list:
    """[fn(job(lo, hi))] over spans lo .. hi-1 of first .. first+count-1; in processes for large sets only."""
    workers = workers or min(os.cpu_count() or 1, 16)
    if workers <= 1 or count * layout_side(size) ** 2 < 2_000_000:
        return [fn(job(first, first + count))]
    chunk = -(-count // (4 * workers))
    jobs = [job(lo, min(lo + chunk, first + count)) for lo in range(first, first + count, chunk)]
    # forkserver, not fork: the caller has torch's threads running, and fork() of a multi-threaded
    # process can deadlock the child (Python 3.12 warns about it)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(fn, jobs))


def generate_set(size: int, count: int, split: str = "test", seed: int = 0, first: int = 0,
                 workers: int = 0, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """Mazes first .. first+count-1 of a set, (count, s+2, s+2) uint8; maze i depends only on
    (generator, split, seed, size, i), so a cached prefix can be extended without regenerating it.
    `generator` is any maze spec (loops.py); `generate_counted` also gives the draws rejected."""
    return generate_counted(size, count, split, seed, first, workers, generator)[0]


def generate_counted(size: int, count: int, split: str = "test", seed: int = 0, first: int = 0,
                     workers: int = 0, generator: str = DEFAULT_GENERATOR) -> tuple[np.ndarray, np.ndarray]:
    """(the layouts of `generate_set`, the draws rejected before each maze: (count,) int32, all 0 for a
    perfect spec, whose every draw is a maze with one path)."""
    name = spec_identity(generator)[0]
    check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    if count <= 0:
        return np.zeros((0, layout_side(size), layout_side(size)), dtype=np.uint8), np.zeros(0, dtype=np.int32)
    job = lambda lo, hi: (split, seed, size, lo, hi, name)
    if name in GENERATORS:
        return np.concatenate(_in_spans(_generate_range, job, first, count, size, workers)), np.zeros(count, np.int32)
    parts = _in_spans(_loop_range, job, first, count, size, workers)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def default_cache() -> Path:
    return Path(os.environ.get("DEQNCA_MAZE_CACHE", Path.home() / ".cache" / "deqnca" / "mazes"))


def cache_path(cache, split: str, size: int, seed: int, generator: str = DEFAULT_GENERATOR) -> Path:
    # depth-first sets keep the file names they had before there were other generators; the other specs
    # are named by their canonical name made filesystem-safe (dfs+loops=0.05 -> dfs_loops-0.05)
    name, version = spec_identity(generator)
    tag = "" if name == "dfs" else f"{name if name in GENERATORS else loops.parse_spec(name).file_tag}-"
    return Path(cache) / f"mazes-{tag}v{version}-{split}-size{size}-seed{seed}.npz"


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


def _stale(path: Path, why: str) -> None:
    warnings.warn(f"{path}: {why}; regenerating it", stacklevel=3)


def _read_cached(path: Path, split: str, size: int, seed: int, generator: str = DEFAULT_GENERATOR) -> tuple | None:
    """(The cached layouts, the draws rejected per maze: stored for the specs of loops.py, 0 for perfect ones),
    or None (with a warning) when the file is not a regular file, is unreadable, is from elsewhere, its
    layouts do not match the content hash it stores (a fast check), or they are not valid mazes
    (`invalid_layouts`, `invalid_loop_layouts`: a hash recomputed over altered layouts does not make them
    valid); the caller then regenerates the set from its seed."""
    name, version = spec_identity(generator)
    perfect = name in GENERATORS
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
            rejected = np.zeros(len(layouts), dtype=np.int32) if perfect else f["rejected"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        return _stale(path, f"unreadable maze cache ({type(e).__name__}: {e})")
    expected = (name, version, split, seed, size)
    if meta != expected or layouts.ndim != 3 or layouts.shape[1:] != (layout_side(size),) * 2:
        return _stale(path, f"cache holds {meta}, expected {expected}")
    if digest is None:
        return _stale(path, "maze cache without a content hash (written by an older deqnca)")
    if layouts.dtype != np.uint8 or layouts_digest(layouts) != digest:
        return _stale(path, "maze cache contents do not match their hash (corrupt)")
    if rejected.shape != (len(layouts),) or rejected.dtype.kind not in "iu" or (rejected < 0).any():
        return _stale(path, "maze cache without a count of rejected draws per maze")
    bad, why = (invalid_layouts if perfect else invalid_loop_layouts)(layouts, size)
    if len(bad):
        return _stale(path, f"{len(bad)} of its {len(layouts)} layouts are not valid mazes ({why})")
    return layouts, rejected.astype(np.int32)


def _write_cached(path: Path, layouts: np.ndarray, split: str, size: int, seed: int,
                  generator: str = DEFAULT_GENERATOR, rejected=None) -> None:
    name, version = spec_identity(generator)
    # perfect sets' files stay as they were; the other specs' also keep each maze's rejected draws
    extra = {} if name in GENERATORS else {"rejected": np.asarray(rejected, dtype=np.int32)}

    def write(tmp):
        with open(tmp, "wb") as fh:     # a file object: savez would append ".npz" to a path
            np.savez_compressed(fh, layouts=layouts, generator=name, version=version, split=split, seed=seed,
                                size=size, sha256=layouts_digest(layouts), **extra)
    atomic_write(path, write)


def load_set(size: int, count: int, split: str = "test", seed: int = 0, cache=None,
             log=None, generator: str = DEFAULT_GENERATOR) -> np.ndarray:
    """The first `count` layouts of a benchmark set of a maze spec, from the cache or generated (and cached)."""
    return load_counted(size, count, split, seed, cache, log, generator)[0]


def load_counted(size: int, count: int, split: str = "test", seed: int = 0, cache=None,
                 log=None, generator: str = DEFAULT_GENERATOR) -> tuple[np.ndarray, np.ndarray]:
    """(the layouts of `load_set`, the draws rejected before each maze, as `generate_counted`)."""
    check_size(size)
    name = spec_identity(generator)[0]
    if count < 1 or count > MAX_COUNT:
        raise ValueError(f"maze count {count}: must be 1 to {MAX_COUNT:,}")
    if count * layout_side(size) ** 2 > MAX_SET_BYTES:
        raise ValueError(f"{count:,} mazes of size {size} would take {count * layout_side(size) ** 2 / 2**30:.0f} GiB "
                         f"(at most {MAX_SET_BYTES >> 30} GiB in one set); ask for fewer")
    path = cache_path(cache or default_cache(), split, size, seed, name)
    have = _read_cached(path, split, size, seed, name) if os.path.lexists(path) else None
    if have is not None and len(have[0]) >= count:
        return have[0][:count], have[1][:count]
    have = have or generate_counted(size, 0)
    t = time.time()
    extra = generate_counted(size, count - len(have[0]), split, seed, first=len(have[0]), generator=name)
    layouts, rejected = np.concatenate([have[0], extra[0]]), np.concatenate([have[1], extra[1]])
    _write_cached(path, layouts, split, size, seed, name, rejected)
    if log:
        log(f"generated {len(extra[0])} {split} mazes of size {size} ({name}) in {time.time() - t:.1f}s -> {path}")
    return layouts, rejected


# ---- checking a set (the per-maze BFS and perfect-maze checks: analysis.py) -----------------------

def _layout_checks(lay: np.ndarray, n: int) -> tuple[list, np.ndarray, np.ndarray]:
    """([(per-layout ok, what is wrong otherwise)] of the checks every layout passes, pixel kinds, path marks)."""
    if lay.ndim != 3 or lay.shape[1:] != (2 * n + 1, 2 * n + 1) or lay.dtype != np.uint8:
        bad = np.zeros(len(lay), dtype=bool)
        return [(bad, f"not an array of ({2 * n + 1}, {2 * n + 1}) uint8 layouts")], None, None
    kind, on = lay & KIND_MASK, (lay & ON_PATH) > 0
    checks = []
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
    return checks, kind, on


def _failures(checks: list) -> tuple[np.ndarray, str]:
    """(indices of the layouts failing any check, which check the first check that fails names first)."""
    ok = np.logical_and.reduce([good for good, _ in checks])
    why = next((f"maze {int(np.argmin(good))}: {what}" for good, what in checks if not good.all()), "")
    return np.flatnonzero(~ok), why


def invalid_layouts(layouts: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """(indices of the layouts that are not valid mazes of size `size`, why the first of them is not).

    A valid layout, as `generate_maze` makes every one (vectorised over the set, so a cache of tens of
    thousands of mazes is checked in about a second): codes WALL/OPEN/START/GOAL with the ON_PATH bit only on
    open pixels; walls all round and on every post between cells; every cell open; one START and one GOAL,
    on cells; a perfect maze (n² − 1 open passages joining all n² cells: a spanning tree); and the ON_PATH
    pixels are exactly the start-to-goal path, i.e. `bfs_path(layout)`: in a tree, a set of open pixels in
    which start and goal have one marked neighbour and every other marked pixel two is that unique path."""
    n, lay = check_size(size), np.asarray(layouts)
    checks, kind, on = _layout_checks(lay, n)
    if kind is None:
        return _failures(checks)
    h, v = kind[:, 1::2, 2:-1:2] != WALL, kind[:, 2:-1:2, 1::2] != WALL
    passages = h.sum(axis=(1, 2)) + v.sum(axis=(1, 2))
    checks.append((passages == n * n - 1, f"not a perfect maze ({n * n - 1} passages join its {n * n} cells)"))
    # the path: start and goal with one marked neighbour, every other marked pixel with two
    pad = np.pad(on, ((0, 0), (1, 1), (1, 1)))
    degree = (pad[:, :-2, 1:-1].astype(np.int8) + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:])
    ends = (kind == START) | (kind == GOAL)
    checks.append(((on | ~ends).all(axis=(1, 2)) & ~(on & ends & (degree != 1)).any(axis=(1, 2))
                   & ~(on & ~ends & (degree != 2)).any(axis=(1, 2)),
                   "its marked path is not a path from start to goal"))
    ok = np.logical_and.reduce([good for good, _ in checks])
    tree = ~ok                                  # connectivity last, on the layouts that passed the rest
    if ok.any():
        tree[ok] = (loops.components(h[ok], v[ok]) == 0).all(axis=1)
    checks.append((tree, "not a perfect maze (its cells are not all connected)"))
    return _failures(checks)


def invalid_loop_layouts(layouts: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """(indices of the layouts that are not valid mazes of a spec of loops.py, why the first of them is not).

    Valid, as `generate_counted` makes every one: the checks of `invalid_layouts` up to one START and one GOAL
    on cells; the goal reachable by exactly one shortest path; the ON_PATH pixels exactly that path, i.e.
    {p : d_start(p) + d_goal(p) = d_start(goal)} (`loops.shortest_marked`: BFS through the whole batch)."""
    n, lay = check_size(size), np.asarray(layouts)
    checks, kind, on = _layout_checks(lay, n)
    if kind is None:
        return _failures(checks)
    todo = np.flatnonzero(np.logical_and.reduce([good for good, _ in checks]))   # BFS only through sound layouts
    path_ok = np.ones(len(lay), dtype=bool)
    chunk = max(1, (1 << 23) // lay[0].size)   # bounds the BFS's arrays to ~100 MB
    for rows in (todo[k:k + chunk] for k in range(0, len(todo), chunk)):
        flat = kind[rows].reshape(len(rows), -1)
        path_ok[rows] = loops.shortest_marked(kind[rows] != WALL, (flat == START).argmax(1), (flat == GOAL).argmax(1),
                                              on[rows])
    checks.append((path_ok, "its marked path is not the unique shortest path from start to goal"))
    return _failures(checks)


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
