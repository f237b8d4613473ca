"""Mazes beyond trees (loops.py and the spec side of generate.py): loops, percolation and starts anywhere,
each target the unique shortest path, checked here by a BFS of the test's own."""
import os
import warnings
from collections import deque

import numpy as np
import pytest

from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze import loop_statistics, loops
from deqnca.tasks.maze.loops import LOOPS_VERSION, MazeSpec, parse_mix, parse_spec

# SHA-256 (`layouts_digest`) of generate_set(9, 20, "test", seed=0, generator=g), computed with the code
# before there were maze specs (commit 14f002f): the perfect sets must stay byte for byte what they were
PERFECT_DIGESTS = {
    "dfs": "fb68e128868b385a358df6b2b0bab7d16cfb6b3963b62d70242d7f66b0afac01",
    "prim": "f483d6e5fccb452ecd289a6d41f8fc6fe80ca887e6b2fb5f49adc6e276f800be",
    "kruskal": "3fef0b2e96e80de5df6512be0fae0598793f32685ef5284aa8a555f9eb2a37f4",
    "wilson": "7a897ae4a5cb18e5b032a62722a16381bb1eb00ce5adb85d15babb1b8dd16f2b",
    "division": "05e46b5e2f1bca58684201484ef44f7fbb09a2210069a7c29511cc6b533b6b1e",
}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "mazes"


def bfs(layout, source):
    """(distance, shortest-path count capped at 2) from `source` to every open pixel: plain Python."""
    open_ = (layout & 3) != 0
    dist, count = {source: 0}, {source: 1}
    todo = deque([source])
    while todo:
        p = todo.popleft()
        for q in ((p[0] + 1, p[1]), (p[0] - 1, p[1]), (p[0], p[1] + 1), (p[0], p[1] - 1)):
            if not open_[q]:
                continue
            if q not in dist:
                dist[q], count[q] = dist[p] + 1, count[p]
                todo.append(q)
            elif dist[q] == dist[p] + 1:
                count[q] = min(2, count[q] + count[p])
    return dist, count


def ends(layout):
    return tuple(np.argwhere((layout & 3) == 2)[0]), tuple(np.argwhere((layout & 3) == 3)[0])


def cell_graph(layout):
    """(cells, passages, components, component of the start) of a layout, by the test's own flood fill."""
    n = (layout.shape[0] - 1) // 2
    open_ = (layout & 3) != 0
    passages = int(open_[1::2, 2:-1:2].sum() + open_[2:-1:2, 1::2].sum())
    label, comps = {}, 0
    for r in range(n):
        for c in range(n):
            if (2 * r + 1, 2 * c + 1) not in label:
                for p in bfs(layout, (2 * r + 1, 2 * c + 1))[0]:
                    label[p] = comps
                comps += 1
    return n * n, passages, comps, label


def assert_unique_shortest_path_marked(layout):
    start, goal = ends(layout)
    ds, count = bfs(layout, start)
    dg, _ = bfs(layout, goal)
    assert goal in ds and count[goal] == 1
    path = {p for p in ds if p in dg and ds[p] + dg[p] == ds[goal]}
    assert path == {tuple(p) for p in np.argwhere(layout & 4)}


# ---- specs ---------------------------------------------------------------------------------------

def test_specs_have_one_canonical_name():
    for text, name in [("dfs", "dfs"), ("dfs+loops=0.05", "dfs+loops=0.05"),
                       ("dfs+anywhere+loops=.050", "dfs+loops=0.05+anywhere"),
                       (" prim + loops=0.5 ", "prim+loops=0.5"), ("percolation+p=1.0", "percolation+p=1"),
                       ("percolation+p=0.3+anywhere", "percolation+p=0.3"), ("wilson+anywhere", "wilson+anywhere")]:
        spec = parse_spec(text)
        assert spec.name == str(spec) == name and parse_spec(name) == spec
    assert parse_spec("dfs").perfect and not parse_spec("dfs+anywhere").perfect
    assert MazeSpec("kruskal", loops=0.1) == parse_spec("kruskal+loops=0.1")
    assert parse_spec("dfs+loops=0.05").file_tag == "dfs_loops-0.05"
    assert [s.name for s in parse_mix("mix")] == list(mazes.GENERATORS)
    assert [s.name for s in parse_mix("dfs, dfs+loops=0.05,percolation+p=0.3")] == [
        "dfs", "dfs+loops=0.05", "percolation+p=0.3"]
    assert loops.check_mix("dfs,prim+anywhere") == "dfs,prim+anywhere"


@pytest.mark.parametrize("text, says", [
    ("eller", "choose one of dfs, prim"), ("dfs+loops=0", "above 0"), ("dfs+loops=0.6", "0 < F <= 0.5"),
    ("dfs+loops=abc", "not a number"), ("dfs+loops=nan", "not a number"), ("dfs+loop=0.1", "unknown"),
    ("dfs+anywhere+anywhere", "repeated"), ("dfs+anywhere=1", "malformed"), ("dfs+p=0.3", "no p="),
    ("percolation", "0 < P <= 1"), ("percolation+p=1.5", "0 < P <= 1"), ("percolation+loops=0.1", "no loops="),
    ("", "choose one of"), ("dfs+", "unknown"), (3, "not a string")])
def test_bad_specs_say_what_to_write_in_one_line(text, says):
    with pytest.raises(ValueError, match=says) as e:
        parse_spec(text)
    assert "\n" not in str(e.value) and "e.g." in str(e.value)


def test_bad_mixes_and_bad_generators_in_the_set_functions():
    with pytest.raises(ValueError, match="more than once"):
        parse_mix("dfs,dfs+loops=0.05,dfs")
    with pytest.raises(ValueError, match="choose one of"):
        parse_mix("mix,dfs")
    with pytest.raises(ValueError, match="0 < F <= 0.5"):
        mazes.generate_set(9, 2, generator="dfs+loops=2")


# ---- the mazes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["dfs+loops=0.05", "dfs+loops=0.5", "prim+loops=0.1+anywhere", "percolation+p=0.5",
                                  "percolation+p=1", "wilson+anywhere"])
def test_the_target_is_the_unique_shortest_path_by_an_independent_bfs(spec):
    layouts, rejected = mazes.generate_counted(11, 25, "test", seed=1, generator=spec)
    assert layouts.shape == (25, 13, 13) and rejected.shape == (25,) and (rejected >= 0).all()
    for layout in layouts:
        assert_unique_shortest_path_marked(layout)
    assert len(mazes.invalid_loop_layouts(layouts, 11)[0]) == 0
    if spec in ("dfs+loops=0.5", "percolation+p=0.5", "percolation+p=1"):
        assert rejected.sum() > 0                          # ties were broken (walls closed), lone starts drawn again


def test_loops_are_loops_and_percolation_leaves_regions_the_start_cannot_reach():
    for spec in ("dfs+loops=0.05", "kruskal+loops=0.2"):
        k = round(parse_spec(spec).loops * 7 * 7)
        layouts, changes = mazes.generate_counted(13, 20, generator=spec)
        for layout, closed in zip(layouts, changes):
            cells, passages, comps, _ = cell_graph(layout)
            # the tree plus k openings, less those closed to make the shortest path unique
            assert comps == 1 and passages - cells + comps == k - closed > 0
    cut_off = 0
    for layout in mazes.generate_set(13, 40, generator="percolation+p=0.5"):
        _, _, comps, label = cell_graph(layout)
        start, _ = ends(layout)
        region = {p for p, c in label.items() if c == label[start]}
        cut_off += comps > 1
        assert {tuple(p) for p in np.argwhere(layout & 4)} <= region
    assert cut_off > 20


def test_starts_anywhere_are_not_dead_ends():
    def branching(spec):
        lay = mazes.generate_set(13, 100, generator=spec)
        deg = [sum(L[r + dr, c + dc] & 3 != 0 for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)))
               for L in lay for r, c in [np.argwhere(L & 3 == 2)[0]]]
        return np.mean(np.array(deg) > 1)

    assert branching("dfs") == 0                            # depth-first search carves from the start: a dead end
    assert branching("dfs+anywhere") > 0.5                  # measured 0.90 over 300 mazes


def test_perfect_specs_are_the_sets_they_were_and_other_specs_have_their_own_streams():
    for g, digest in PERFECT_DIGESTS.items():
        assert mazes.layouts_digest(mazes.generate_set(9, 20, "test", seed=0, generator=g)) == digest
    assert mazes.layouts_digest(mazes.generate_set(9, 20, generator=MazeSpec("prim"))) == PERFECT_DIGESTS["prim"]
    assert mazes.cache_path("c", "test", 9, 0, MazeSpec("dfs")).name == "mazes-v1-test-size9-seed0.npz"
    assert mazes.cache_path("c", "test", 9, 0, "prim").name == "mazes-prim-v1-test-size9-seed0.npz"
    assert mazes.cache_path("c", "test", 9, 0, "dfs+anywhere+loops=0.05").name == \
        f"mazes-dfs_loops-0.05_anywhere-v{LOOPS_VERSION}-test-size9-seed0.npz"
    a = mazes.generate_set(9, 10, generator="dfs+loops=0.05")
    assert np.array_equal(a, mazes.generate_set(9, 10, generator="dfs+loops=0.050"))
    assert np.array_equal(a[4:], mazes.generate_set(9, 6, first=4, generator="dfs+loops=0.05"))
    assert not np.array_equal(a, mazes.generate_set(9, 10, generator="dfs+loops=0.1"))
    assert not np.array_equal(a, mazes.generate_set(9, 10, seed=1, generator="dfs+loops=0.05"))


def test_a_loop_set_is_the_same_in_a_worker():
    # the worker processes' function on a span (the pool itself is the perfect sets', tests/test_mazes.py)
    layouts, rejected = mazes.generate_counted(19, 30, "test", workers=1, generator="dfs+loops=0.2")
    part = mazes._loop_range(("test", 0, 19, 10, 30, "dfs+loops=0.2"))
    assert np.array_equal(part[0], layouts[10:]) and np.array_equal(part[1], rejected[10:])


# ---- the cache, the rejected draws and the statistics ----------------------------------------------

def test_a_loop_cache_round_trips_with_its_rejected_draws(cache):
    spec = "percolation+p=0.4"
    a, rej = mazes.load_counted(9, 10, "test", cache=cache, generator=spec)
    path = mazes.cache_path(cache, "test", 9, 0, spec)
    assert path.exists() and path.name == f"mazes-percolation_p-0.4-v{LOOPS_VERSION}-test-size9-seed0.npz"
    with np.load(path) as f:
        assert str(f["generator"]) == spec and int(f["version"]) == loops.LOOPS_VERSION
        assert np.array_equal(f["rejected"], rej) and rej.sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b, rej_b = mazes.load_counted(9, 25, "test", cache=cache, generator=spec)     # extends the cached prefix
        assert np.array_equal(mazes.load_set(9, 25, "test", cache=cache, generator=parse_spec(spec)), b)
    assert np.array_equal(a, b[:10]) and np.array_equal(rej, rej_b[:10])
    gen, gen_rej = mazes.generate_counted(9, 25, generator=spec)
    assert np.array_equal(b, gen) and np.array_equal(rej_b, gen_rej)


def test_a_mark_moved_off_the_shortest_path_is_found_and_the_set_regenerated(cache):
    spec = "dfs+loops=0.2"
    good = mazes.load_set(9, 8, "test", cache=cache, generator=spec)
    path = mazes.cache_path(cache, "test", 9, 0, spec)
    bad = good.copy()
    lay = bad[3]
    on = np.argwhere((lay & 4 > 0) & (lay & 3 == 1))[0]                # a marked passage or cell on the path
    off = np.argwhere((lay & 3 == 1) & (lay & 4 == 0))[0]   # an open pixel off the path
    lay[tuple(on)] &= 3
    lay[tuple(off)] |= 4
    with np.load(path) as f:
        rejected = f["rejected"]
    mazes._write_cached(path, bad, "test", 9, 0, spec, rejected)      # its hash recomputed: only the check finds it
    with pytest.warns(UserWarning, match="maze 3: its marked path is not the unique shortest path"):
        again = mazes.load_set(9, 8, "test", cache=cache, generator=spec)
    assert np.array_equal(again, good)
    assert len(mazes.invalid_loop_layouts(good, 9)[0]) == 0
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    os.remove(path)
    arrays["rejected"] = arrays["rejected"][:-1]                       # a count per maze, or the file is stale
    np.savez_compressed(path, **arrays)
    with pytest.warns(UserWarning, match="rejected draws"):
        assert np.array_equal(mazes.load_set(9, 8, "test", cache=cache, generator=spec), good)


def test_mixed_specs_interleave_and_the_statistics_report_the_rejected_draws(cache):
    from deqnca.tasks.maze.task import load_mixed

    specs = ["dfs", "dfs+loops=0.05", "percolation+p=0.5"]
    mixed = load_mixed(5, 7, "test", ",".join(specs), cache)
    assert len(mixed) == 7
    for i, layout in enumerate(mixed):
        assert np.array_equal(layout, mazes.load_set(5, 3, "test", cache=cache, generator=specs[i % 3])[i // 3])
    st = loop_statistics.spec_statistics("percolation+p=0.5", 13, 30)
    assert st["rejected"] > 0 and st["unreachable"] > 0 and st["path_cells"] >= 2
    st = loop_statistics.spec_statistics("dfs+loops=0.2", 13, 30)
    # k openings, less the walls closed to make each shortest path unique
    assert st["cycle_rank"] == round(0.2 * 49) - st["rejected"] and 0 < st["changed"] <= 1 and st["unreachable"] == 0
    plain = loop_statistics.spec_statistics("dfs", 13, 10)
    assert plain["rejected"] == 0 == plain["changed"]
    table = loop_statistics.statistics_table([9], 5, ["dfs+loops=0.05", "percolation+p=0.0001"])
    assert "| dfs+loops=0.05 | 9 |" in table and "gave up" in table
