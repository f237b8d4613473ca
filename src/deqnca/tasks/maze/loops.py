"""Mazes beyond trees: loops, disconnected regions and starts anywhere, named by a *maze spec*.

Spec syntax (`parse_spec`; the canonical order and number format are `MazeSpec.name`'s):

    GEN                  a perfect maze of GEN (dfs, prim, kruskal, wilson, division), as generate.py draws it
    GEN+loops=F          that maze, then round(F * n^2) of its closed walls between adjacent cells opened,
                         drawn uniformly without replacement (0 < F <= 0.5; at most every closed wall)
    percolation+p=P      every wall between adjacent cells open independently with probability P
                         (0 < P <= 1): regions the start cannot reach exist
    ...+anywhere         the carver starts at a random cell other than the start (dfs otherwise carves
                         from the start, which makes every start a dead end; only dfs and prim depend on
                         it); percolation accepts it and drops it from its name, its start and goal being
                         random cells anyway

e.g. `dfs+loops=0.05+anywhere`, `percolation+p=0.6`. The five plain names are generate.py's perfect
sets, byte for byte (their streams, cache names and check). Every other spec draws maze i from its own
stream (`spec_rng`: the canonical name is part of the key): a start, a goal (for percolation, among the cells
the start reaches; a start that reaches none is drawn again) and a maze; then, while the goal has several
shortest paths, one wall on some but not all of them is closed (`make_unique`). The unique shortest path is
the target; the changes it took are counted (`rejected`). Rejecting whole draws with ties instead favoured
a start and goal close together (docs/mazes.md). This module works on the cell graph and on flat pixel masks; the
layouts, sets, cache and their check (`generate.invalid_loop_layouts`) are generate.py's. The statistics
of each spec: loop_statistics.py, `python -m deqnca.tasks.maze.loop_statistics --sizes 9 19 59 --count 300`.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

from deqnca.tasks.maze.carvers import CARVERS

LOOPS_VERSION = 2                # keys the streams and cache files of every non-perfect spec: bump when they change
MAX_ATTEMPTS = 1000              # draws of one maze before giving up
PERCOLATION = "percolation"
MIX = "mix"                      # MazeConfig.generator: the five perfect generators in equal shares
SYNTAX = ("write GEN, GEN+loops=F or percolation+p=P, each optionally +anywhere (GEN one of "
          f"{', '.join(CARVERS)}; 0 < F <= 0.5; 0 < P <= 1), e.g. dfs+loops=0.05")


def _number(x: float) -> str:
    # the shortest digits that read back as the same float, never an exponent: 0.05, 0.3, 1
    return np.format_float_positional(float(x), trim="-")


@dataclass(frozen=True)
class MazeSpec:
    """A maze distribution: `generator` (a carver of CARVERS or "percolation"), `loops` (the fraction F of
    n^2 extra openings, 0 for none), `p` (percolation's open probability) and `anywhere` (see the module)."""

    generator: str = "dfs"
    loops: float = 0.0
    p: float = 0.0
    anywhere: bool = False

    def __post_init__(self):
        g = self.generator
        if g not in CARVERS and g != PERCOLATION:
            raise ValueError(f"maze generator {g!r}: choose one of {', '.join([*CARVERS, PERCOLATION])}; {SYNTAX}")
        for key in ("loops", "p"):
            object.__setattr__(self, key, float(getattr(self, key)))
        object.__setattr__(self, "anywhere", bool(self.anywhere) and g != PERCOLATION)
        if g == PERCOLATION and (self.loops or not 0 < self.p <= 1):
            raise ValueError("maze spec percolation: takes p=P with 0 < P <= 1 and no loops=, e.g. percolation+p=0.6")
        if g != PERCOLATION and (self.p or not 0 <= self.loops <= 0.5):
            raise ValueError(f"maze spec {g}: takes loops=F with 0 < F <= 0.5 and no p=, e.g. {g}+loops=0.05")

    @property
    def name(self) -> str:
        """The canonical spec: GEN[+loops=F][+anywhere] or percolation+p=P."""
        parts = [self.generator]
        if self.generator == PERCOLATION:
            parts.append(f"p={_number(self.p)}")
        elif self.loops:
            parts.append(f"loops={_number(self.loops)}")
        return "+".join(parts + ["anywhere"] * self.anywhere)

    @property
    def perfect(self) -> bool:
        """One of generate.py's perfect sets (their streams, cache files and check)."""
        return self.generator in CARVERS and not self.loops and not self.anywhere

    @property
    def file_tag(self) -> str:
        """The name in a cache file's name: '+' -> '_', '=' -> '-' (a canonical name has neither '_' nor '-')."""
        return self.name.replace("+", "_").replace("=", "-")

    def __str__(self) -> str:
        return self.name


def parse_spec(text) -> MazeSpec:
    """The MazeSpec of a spec string (a MazeSpec is returned as is), or a one-line ValueError that says what
    to write. Options may come in any order, each at most once: `parse_spec("dfs+anywhere+loops=.05").name`
    is "dfs+loops=0.05+anywhere"."""
    if isinstance(text, MazeSpec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"maze spec {text!r}: not a string; {SYNTAX}")
    head, *options = text.strip().split("+")
    fields: dict = {}
    for opt in options:
        key, eq, value = opt.strip().partition("=")
        if key not in ("loops", "p", "anywhere") or (key == "anywhere") == bool(eq) or key in fields:
            raise ValueError(f"maze spec {text!r}: option {opt!r} is unknown, repeated or malformed; {SYNTAX}")
        fields[key] = True if key == "anywhere" else _value(value, text)
    if fields.get("loops") == 0 or fields.get("p") == 0:
        raise ValueError(f"maze spec {text!r}: loops= and p= must be above 0; {SYNTAX}")
    return MazeSpec(head.strip(), **fields)


def _value(value: str, text: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not np.isfinite(x):
        raise ValueError(f"maze spec {text!r}: {value!r} is not a number; {SYNTAX}")
    return x


def parse_mix(text) -> list[MazeSpec]:
    """The specs of a MazeConfig.generator value: "mix" (the five perfect generators), one spec, or
    several separated by commas (e.g. "dfs,dfs+loops=0.05,percolation+p=0.6"), each at most once."""
    if text == MIX:
        return [MazeSpec(g) for g in CARVERS]
    specs = [parse_spec(t) for t in text.split(",")] if isinstance(text, str) else [parse_spec(text)]
    names = [s.name for s in specs]
    twice = sorted({s for s in names if names.count(s) > 1})
    if twice:
        raise ValueError(f"maze specs {text!r}: {', '.join(twice)} more than once; list each spec once")
    return specs


def check_mix(text) -> str:
    """MazeConfig.generator's validation: `text` when `parse_mix` accepts it, its one-line ValueError otherwise."""
    parse_mix(text)
    return text


# ---- drawing one maze on the cell graph ----------------------------------------------------------

def spec_rng(spec: MazeSpec, split: str, seed: int, size: int, index: int) -> random.Random:
    # the key of generate._rng with the canonical name in it: every spec has its own streams
    return random.Random(f"deqnca-maze-v{LOOPS_VERSION}:{spec.name}:{split}:{seed}:{size}:{index}")


def tree_walls(n: int, parent: list) -> tuple[bytearray, bytearray]:
    """The open walls of a tree of parents: h[c] joins cell c to c + 1, v[c] joins c to c + n."""
    par = np.asarray(parent)
    child = np.flatnonzero(par >= 0)
    low, across = np.minimum(child, par[child]), np.abs(child - par[child]) == 1
    h, v = np.zeros(n * n, dtype=np.uint8), np.zeros(n * n, dtype=np.uint8)
    h[low[across]], v[low[~across]] = 1, 1
    return bytearray(h), bytearray(v)             # bytearrays: the BFS indexes them one by one


def tree_path(parent: list, start: int, goal: int) -> list:
    """The start-to-goal path of a tree of parents (rooted anywhere), goal first (as `unique_path`)."""
    up, c = [start], start
    while parent[c] >= 0:
        c = parent[c]
        up.append(c)
    where = {c: k for k, c in enumerate(up)}
    down, c = [goal], goal
    while c not in where:
        c = parent[c]
        down.append(c)
    return down + up[:where[c]][::-1]


def pixels(n: int, h, v, path: list) -> tuple[np.ndarray, np.ndarray]:
    """(open, on path) masks of the (2n+1)-pixel grid of a maze of open walls h, v (cells at odd coordinates,
    walls between them, posts and border closed) and a path of cells, in either direction."""
    side = 2 * n + 1
    open_ = np.zeros((side, side), dtype=bool)
    open_[1::2, 1::2] = True
    open_[1::2, 2:-1:2] = np.frombuffer(bytes(h), np.uint8).reshape(n, n)[:, :-1]
    open_[2:-1:2, 1::2] = np.frombuffer(bytes(v), np.uint8).reshape(n, n)[:-1]
    on = np.zeros((side, side), dtype=bool)
    r, c = np.divmod(np.asarray(path), n)
    on[2 * r + 1, 2 * c + 1] = True
    on[r[1:] + r[:-1] + 1, c[1:] + c[:-1] + 1] = True       # the wall between consecutive cells: their midpoint
    return open_, on


def draw(n: int, rng: random.Random, spec: MazeSpec) -> tuple:
    """One attempt: (start, goal, h, v, parent), h and v the open walls (`tree_walls`), parent the tree
    before the openings (None for percolation). Start and goal are drawn first, as generate.py does; a
    percolation goal is then drawn among the cells the start reaches (None when it reaches none)."""
    start, goal = rng.sample(range(n * n), 2)
    if spec.generator == PERCOLATION:
        h, v = bytearray(n * n), bytearray(n * n)
        for c in range(n * n):                         # every wall right of a cell, then every wall below one
            h[c] = c % n < n - 1 and rng.random() < spec.p
        for c in range(n * n - n):
            v[c] = rng.random() < spec.p
        region = [c for c, d in enumerate(_bfs(n, h, v, start)[0]) if d > 0]
        return start, (rng.choice(region) if region else None), h, v, None
    root = start
    if spec.anywhere:
        root = rng.randrange(n * n - 1)
        root += root >= start
    parent = CARVERS[spec.generator](n, root, rng)
    h, v = tree_walls(n, parent)
    if spec.loops:
        closed = [c for c in range(n * n) if c % n < n - 1 and not h[c]]
        closed += [n * n + c for c in range(n * n - n) if not v[c]]
        for w in rng.sample(closed, min(round(spec.loops * n * n), len(closed))):
            if w < n * n:
                h[w] = 1
            else:
                v[w - n * n] = 1
    return start, goal, h, v, parent


def _moves(n: int, h, v, c: int):
    """(neighbour, wall) of cell c through its open walls; a wall is c' for h[c'] or n² + c' for v[c']."""
    if c >= n and v[c - n]:
        yield c - n, n * n + c - n
    if c < n * n - n and v[c]:
        yield c + n, n * n + c
    if c % n and h[c - 1]:
        yield c - 1, c - 1
    if c % n < n - 1 and h[c]:
        yield c + 1, c


def _bfs(n: int, h, v, source: int) -> tuple[list, list]:
    """(distance from source, -1 where unreached; the exact number of shortest paths) for every cell."""
    dist, count = [-1] * (n * n), [0] * (n * n)
    dist[source], count[source] = 0, 1
    todo = deque([source])
    while todo:
        c = todo.popleft()
        for d, _ in _moves(n, h, v, c):
            if dist[d] < 0:
                dist[d] = dist[c] + 1
                todo.append(d)
            if dist[d] == dist[c] + 1:
                count[d] += count[c]
    return dist, count


def make_unique(n: int, h, v, start: int, goal: int, rng: random.Random, keep=frozenset()) -> int:
    """Close open walls, one at a time, until the goal has a unique shortest path; returns how many. Each wall
    closed lies on some shortest path but not on all of them (so a shortest path survives and the goal stays
    reachable), drawn at random among those not in `keep` (a perfect maze's own passages) when there are any.
    Rejecting whole draws instead favoured a start and goal close together (docs/mazes.md)."""
    closed = 0
    while True:
        ds, cs = _bfs(n, h, v, start)
        total = cs[goal]
        if total == 1:
            return closed
        dg, cg = _bfs(n, h, v, goal)
        length, tied = ds[goal], []
        for a in range(n * n):
            if ds[a] < 0 or dg[a] < 0 or ds[a] + dg[a] != length:
                continue
            for b, wall in _moves(n, h, v, a):
                if dg[b] == dg[a] - 1 and cs[a] * cg[b] < total:
                    tied.append(wall)
        loose = [w for w in tied if w not in keep]
        wall = rng.choice(loose or tied)
        if wall < n * n:
            h[wall] = 0
        else:
            v[wall - n * n] = 0
        closed += 1


def unique_path(n: int, h, v, start: int, goal: int) -> list | None:
    """The cells of the unique shortest start-to-goal path (goal first), or None when the goal is
    unreachable or several shortest paths reach it (BFS counting the shortest paths, capped at 2)."""
    dist = [-1] * (n * n)
    count = bytearray(n * n)
    prev = [-1] * (n * n)
    dist[start], count[start] = 0, 1
    todo = deque([start])
    while todo:
        c = todo.popleft()
        if dist[goal] >= 0 and dist[c] >= dist[goal]:
            break                                      # every predecessor of the goal is done
        step, k = dist[c] + 1, count[c]
        for d, ok in ((c - n, c >= n and v[c - n]), (c + n, v[c]), (c - 1, c % n and h[c - 1]), (c + 1, h[c])):
            if not ok:
                continue
            if dist[d] < 0:
                dist[d], count[d], prev[d] = step, k, c
                todo.append(d)
            elif dist[d] == step:
                count[d] = min(2, count[d] + k)
    if dist[goal] < 0 or count[goal] > 1:
        return None
    path = [goal]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return path


def draw_accepted(n: int, rng: random.Random, spec: MazeSpec) -> tuple:
    """(an attempt of `draw` made to have a unique shortest path, that path, the changes it took: the draws
    discarded (a percolation start that reaches no cell) plus the walls `make_unique` closed)."""
    for rejected in range(MAX_ATTEMPTS):
        start, goal, h, v, parent = draw(n, rng, spec)
        if goal is None:
            continue
        keep = frozenset() if parent is None else _tree_walls_set(n, parent)
        closed = make_unique(n, h, v, start, goal, rng, keep)
        path = unique_path(n, h, v, start, goal)
        return (start, goal, h, v, parent), path, rejected + closed
    raise ValueError(f"maze spec {spec.name}, {n}x{n} cells: none of {MAX_ATTEMPTS} draws had a start that reaches "
                     "another cell; use a larger p")


def _tree_walls_set(n: int, parent: list) -> frozenset:
    """The walls (as `_moves` names them) a tree of parents opens: make_unique closes the others first."""
    h, v = tree_walls(n, parent)
    return frozenset([c for c in range(n * n) if h[c]] + [n * n + c for c in range(n * n) if v[c]])


# ---- batches: BFS and components -----------------------------------------------------------------

def bfs_batch(open_: np.ndarray, source: np.ndarray, target: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """BFS through a batch of side x side grids at once, one numpy pass per layer: open_ the flat (B * side^2,)
    open pixels (walls all round each grid), source and target one flat pixel index per grid. Returns, per
    pixel, (the distance from its grid's source, -1 where unreached; the number of shortest paths, capped at
    2); a grid stops after the layer that reaches its target, so every pixel no farther has its distance."""
    area = side * side
    dist = np.full(open_.size, -1, dtype=np.int32)
    count = np.zeros(open_.size, dtype=np.uint8)
    dist[source], count[source] = 0, 1
    front, layer = np.asarray(source, dtype=np.int64), 0
    steps = np.array([-side, side, -1, 1])
    while front.size:
        to = (front[:, None] + steps).ravel()
        frm = np.repeat(front, 4)
        new = open_[to] & (dist[to] < 0)
        front, at = np.unique(to[new], return_inverse=True)
        layer += 1
        dist[front] = layer
        count[front] = np.minimum(np.bincount(at.ravel(), weights=count[frm[new]], minlength=front.size), 2)
        done = dist[target] >= 0
        front = front[~done[front // area]]
    return dist, count


def shortest_marked(open_: np.ndarray, start: np.ndarray, goal: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Per grid of a batch (open_ and marked (B, side, side) bool, start and goal flat pixel indices within a
    grid): whether the goal is reachable by exactly one shortest path and the marked pixels are exactly it,
    {p : d_start(p) + d_goal(p) = d_start(goal)} (BFS from start and from goal, `bfs_batch`)."""
    b, side = open_.shape[0], open_.shape[1]
    flat = open_.ravel()
    base = np.arange(b) * side * side
    ds, count = bfs_batch(flat, base + start, base + goal, side)
    dg, _ = bfs_batch(flat, base + goal, base + start, side)
    length = ds[base + goal]
    shortest = ((ds >= 0) & (dg >= 0) & (ds + dg == np.repeat(length, side * side))).reshape(b, -1)
    return (length >= 0) & (count[base + goal] == 1) & (shortest == marked.reshape(b, -1)).all(1)


def components(passage_h: np.ndarray, passage_v: np.ndarray) -> np.ndarray:
    """The component of every cell, (B, n * n): the smallest flat index of a cell it is joined to. passage_h
    (B, n, n-1) joins cell (i, j) to (i, j+1), passage_v (B, n-1, n) joins (i, j) to (i+1, j). Union-find for
    the whole batch at once: every root hooks onto the smallest root it has an edge to, then every pointer
    jumps to its root; the components at least halve per round."""
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
    return parent.reshape(b, n * n) - np.arange(b)[:, None] * n * n
