"""The maze generators proper: each carves a spanning tree of the n x n cell graph (a perfect maze).

A generator is `carve(n, start, rng) -> parent` on flat cell indices c = row * n + col: `parent` is a
list with parent[start] = -1 and, for every other cell, the neighbouring cell it is joined to (the tree
rooted at the start, so the start-to-goal path is the goal's chain of parents). All randomness comes
from `rng`, which has already drawn the start and goal. `CARVERS` (also `generate.GENERATORS`) names them; the layout,
the sets and the cache are `generate.py`'s, the statistics of each distribution (docs/mazes.md "Maze
distributions") `analysis.py`'s.
"""
from __future__ import annotations

import functools
import random


@functools.lru_cache(maxsize=16)
def _neighbours(n: int) -> tuple[tuple[int, ...], ...]:
    """Each cell's neighbours in a fixed order (up, down, left, right)."""
    out = []
    for c in range(n * n):
        r, q = divmod(c, n)
        out.append(tuple(d for d, ok in ((c - n, r > 0), (c + n, r < n - 1), (c - 1, q > 0), (c + 1, q < n - 1))
                         if ok))
    return tuple(out)


def _root(n: int, edges, start: int) -> list[int]:
    """Parents of a spanning tree given as undirected edges, rooted at `start`."""
    adj = [[] for _ in range(n * n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    parent = [-1] * (n * n)
    seen = bytearray(n * n)
    seen[start] = 1
    todo = [start]
    while todo:
        c = todo.pop()
        for d in adj[c]:
            if not seen[d]:
                seen[d] = 1
                parent[d] = c
                todo.append(d)
    return parent


def carve_dfs(n: int, start: int, rng: random.Random) -> list[int]:
    """Randomised depth-first search (recursive backtracker), the benchmark's generator: long
    winding corridors, few dead ends (~10% of cells) and a long solution path."""
    # byte-identical to the generator of every cached set and documented number: keep the order of
    # the neighbour checks and of the rng calls (randrange only when there is a choice)
    parent = [-1] * (n * n)
    visited = bytearray(n * n)
    visited[start] = 1
    stack = [start]
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
        stack.append(nxt)
    return parent


def carve_prim(n: int, start: int, rng: random.Random) -> list[int]:
    """Randomised Prim (frontier-cell form): grow from the start, each step joining a uniformly drawn
    frontier cell to one of its cells already in the maze. Short branches everywhere: the most dead
    ends (~35% of cells) and branch points, the shortest paths."""
    nbrs = _neighbours(n)
    parent = [-1] * (n * n)
    state = bytearray(n * n)                 # 0 outside, 1 frontier, 2 in the maze
    state[start] = 2
    frontier = list(nbrs[start])
    for d in frontier:
        state[d] = 1
    while frontier:
        k = rng.randrange(len(frontier))
        c = frontier[k]
        frontier[k] = frontier[-1]           # swap-remove: O(1), the draw stays uniform
        frontier.pop()
        inside = [d for d in nbrs[c] if state[d] == 2]
        parent[c] = inside[rng.randrange(len(inside))] if len(inside) > 1 else inside[0]
        state[c] = 2
        for d in nbrs[c]:
            if state[d] == 0:
                state[d] = 1
                frontier.append(d)
    return parent


def carve_kruskal(n: int, start: int, rng: random.Random) -> list[int]:
    """Randomised Kruskal: knock down walls in a uniformly shuffled order whenever they join two
    separate regions (union-find). Many short dead ends (~30% of cells), no directional bias."""
    edges = [(c, c + 1) for c in range(n * n) if c % n < n - 1] + [(c, c + n) for c in range(n * n - n)]
    rng.shuffle(edges)
    root = list(range(n * n))

    def find(c):
        while root[c] != c:
            root[c] = root[root[c]]          # path halving
            c = root[c]
        return c

    kept = []
    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            root[ra] = rb
            kept.append((a, b))
            if len(kept) == n * n - 1:
                break
    return _root(n, kept, start)


def carve_wilson(n: int, start: int, rng: random.Random) -> list[int]:
    """Wilson's algorithm: loop-erased random walks into the growing tree give a *uniform* spanning
    tree (every perfect maze on the grid equally likely), the unbiased reference distribution."""
    nbrs = _neighbours(n)
    in_tree = bytearray(n * n)
    in_tree[start] = 1                       # uniform whatever the root and the order of the walks
    parent = [-1] * (n * n)
    nxt = [-1] * (n * n)
    for u in range(n * n):
        c = u
        while not in_tree[c]:                # walk; overwriting nxt erases the loops
            nb = nbrs[c]
            nxt[c] = nb[rng.randrange(len(nb))]
            c = nxt[c]
        c = u
        while not in_tree[c]:
            in_tree[c] = 1
            parent[c] = nxt[c]
            c = nxt[c]
    return parent


def carve_division(n: int, start: int, rng: random.Random) -> list[int]:
    """Recursive division: split a room of cells by a straight wall with one gap, recurse on both
    halves, down to one-cell-wide corridors. Long straight walls and corridors and few crossings;
    the solution must pass the gaps of the large walls (bottlenecks)."""
    edges = []
    todo = [(0, 0, n, n)]                    # rooms (top row, left column, height, width) in cells
    while todo:
        r0, c0, h, w = todo.pop()
        if h == 1 or w == 1:                 # a corridor: open it end to end
            step = 1 if h == 1 else n
            first = r0 * n + c0
            edges += [(first + k * step, first + (k + 1) * step) for k in range(max(h, w) - 1)]
            continue
        if h > w or (h == w and rng.random() < 0.5):
            cut, gap = rng.randrange(1, h), rng.randrange(w)     # wall above row r0 + cut
            a = (r0 + cut - 1) * n + c0 + gap
            edges.append((a, a + n))
            todo += [(r0, c0, cut, w), (r0 + cut, c0, h - cut, w)]
        else:
            cut, gap = rng.randrange(1, w), rng.randrange(h)     # wall left of column c0 + cut
            a = (r0 + gap) * n + c0 + cut - 1
            edges.append((a, a + 1))
            todo += [(r0, c0, h, cut), (r0, c0 + cut, h, w - cut)]
    return _root(n, edges, start)


# the registry of the perfect generators (generate.GENERATORS is this dict): a name here is a maze spec
CARVERS = {"dfs": carve_dfs, "prim": carve_prim, "kruskal": carve_kruskal, "wilson": carve_wilson,
           "division": carve_division}
