"""Mazes: generator determinism and validity, encoding sizes, cache, CLI, and a tiny training run."""
import json
import warnings

import numpy as np
import pytest
import torch

from deqnca.core.resources import models_dir
from deqnca.core.solvers import get_solver
from deqnca.tasks.maze import analysis, carvers
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.config import PRESETS


def model_of(name: str, **changes) -> dict:
    """The model config of maze preset `name` with `changes`."""
    return {**PRESETS.build(name).model, **changes}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "mazes"


def test_generator_is_deterministic_and_prefix_stable():
    a = mazes.generate_set(9, 30, "test", seed=0)
    assert np.array_equal(a, mazes.generate_set(9, 30, "test", seed=0))
    assert np.array_equal(a[:7], mazes.generate_set(9, 7, "test", seed=0))
    assert np.array_equal(a[10:], mazes.generate_set(9, 20, "test", seed=0, first=10))
    assert not np.array_equal(a, mazes.generate_set(9, 30, "test", seed=1))
    assert not np.array_equal(a, mazes.generate_set(9, 30, "train", seed=0))
    assert len({m.tobytes() for m in a}) > 25            # distinct mazes, not one repeated


def test_parallel_generation_matches_serial():
    serial = mazes.generate_set(59, 600, "test", workers=1)
    assert np.array_equal(serial, mazes.generate_set(59, 600, "test", workers=2))


@pytest.mark.parametrize("size", [3, 5, 9, 13, 33])
def test_mazes_are_perfect_and_the_path_is_the_bfs_solution(size):
    for layout in mazes.generate_set(size, 25, "test", seed=3):
        assert analysis.is_perfect(layout)
        kind = layout & mazes.KIND_MASK
        assert (kind == mazes.START).sum() == 1 and (kind == mazes.GOAL).sum() == 1
        path = (layout & mazes.ON_PATH) > 0
        bfs = analysis.bfs_path(layout)
        assert bfs[kind == mazes.START].all() and bfs[kind == mazes.GOAL].all()
        assert np.array_equal(path, bfs)


def test_is_perfect_detects_a_loop_and_a_closed_cell():
    layout = mazes.generate_set(9, 1, "test")[0]
    walls = np.argwhere((layout == mazes.WALL)[1:-1, 1:-1]) + 1
    inner = [tuple(p) for p in walls if (p[0] % 2) != (p[1] % 2)]     # a wall between two cells
    looped = layout.copy()
    looped[inner[0]] = mazes.OPEN
    assert not analysis.is_perfect(looped)
    closed = layout.copy()
    closed[1, 1] = mazes.WALL
    assert not analysis.is_perfect(closed)


@pytest.mark.parametrize("size,cells,px", [(3, 2, 12), (5, 3, 16), (9, 5, 24), (59, 30, 124), (201, 101, 408)])
def test_size_convention(size, cells, px):
    assert mazes.check_size(size) == cells
    assert mazes.image_side(size) == px


def test_encoding_colours_blocks_and_border():
    layouts = mazes.generate_set(9, 4, "test")
    x, y = mazes.to_images(layouts)
    assert x.shape == (4, 3, 24, 24) and y.shape == (4, 24, 24) and x.dtype == torch.float32
    assert x[:, :, 0].abs().sum() == 0 and x[:, :, :, -1].abs().sum() == 0     # black border
    for img, lay, target in zip(x, layouts, y):
        r, c = np.argwhere((lay & mazes.KIND_MASK) == mazes.START)[0]
        block = img[:, 2 * r + 1:2 * r + 3, 2 * c + 1:2 * c + 3]               # 2x2 green block
        assert torch.equal(block, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 2, 2))
        green = (img[0] == 0) & (img[1] == 1) & (img[2] == 0)
        red = (img[0] == 1) & (img[1] == 0) & (img[2] == 0)
        assert green.sum() == 4 and red.sum() == 4
        assert target[green].all() and target[red].all()
        assert (target.bool() <= (img.amax(0) > 0)).all()                   # the path is never a wall
        assert int(target.sum()) == 4 * int(((lay & mazes.ON_PATH) > 0).sum())


def test_bad_sizes_are_one_line_errors():
    for bad in (8, 1, 0, -3, 9.0, "9"):
        with pytest.raises(ValueError, match="odd integer >= 3"):
            mazes.check_size(bad)


def test_cache_roundtrip_extension_and_corruption(cache):
    a = mazes.load_set(9, 10, "test", cache=cache)
    path = mazes.cache_path(cache, "test", 9, 0)
    assert path.exists()
    b = mazes.load_set(9, 25, "test", cache=cache)                  # extends the cached prefix
    assert np.array_equal(a, b[:10]) and np.array_equal(b, mazes.generate_set(9, 25, "test"))
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable maze cache"):
        c = mazes.load_set(9, 5, "test", cache=cache)
    assert np.array_equal(c, b[:5])
    other = mazes.cache_path(cache, "test", 9, 1)
    path.rename(other)                                              # a file holding another seed's set
    with pytest.warns(UserWarning, match="expected"):
        mazes.load_set(9, 5, "test", seed=1, cache=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(mazes.load_set(9, 5, "test", seed=1, cache=cache),
                              mazes.generate_set(9, 5, "test", seed=1))


def test_deq_rule_stays_bounded_for_many_steps_on_a_large_maze():
    from deqnca.tasks.maze.model import MazeSolverNet

    torch.manual_seed(0)
    model = MazeSolverNet(model_of("deq", width=8))
    x, _ = mazes.to_images(mazes.generate_set(19, 1, "test"))
    with torch.no_grad():
        for p in model.rule.parameters():
            p.mul_(5.0)                     # weights far from a contraction: tanh still bounds the state
        f = model.step_map(x)
        z = model.initial_state(x, torch.Generator().manual_seed(0), kind="mixed")
        for _ in range(100):
            z = f(z)
    assert torch.isfinite(z).all() and z.min() >= 0 and z.max() <= model.rule.bound


def test_progressive_loss_uses_both_terms():
    import random

    from deqnca.tasks.maze.model import MazeSolverNet, dt_loss

    model = MazeSolverNet(model_of("dt", width=8, train_iters=4))
    x, y = mazes.to_images(mazes.generate_set(5, 4, "train"))
    only_max, _ = dt_loss(model, x, y, 0.0, random.Random(0))
    only_prog, _ = dt_loss(model, x, y, 1.0, random.Random(0))
    mixed, _ = dt_loss(model, x, y, 0.25, random.Random(0))
    assert torch.allclose(mixed, 0.75 * only_max + 0.25 * only_prog, atol=1e-6)


def test_cli_generate_train_eval_show(tmp_path, cache):
    from deqnca.cli import main

    args = ["--cache", str(cache)]
    assert main(["maze", "generate", "--sizes", "5", "7", "--count", "20", *args]) == 0
    with pytest.raises(SystemExit) as e:                                               # even size: usage error
        main(["maze", "generate", "--sizes", "8", "--count", "2", *args])
    assert e.value.code == 2
    run = tmp_path / "run"
    for model in ("dt", "deq"):
        assert main(["maze", "train", "--model", model, "--width", "8", "--train-size", "5", "--train-count", "64",
                     "--epochs", "1", "--batch-size", "32", "--set", "train_iters=3", "--out", str(run / model),
                     "--device", "cpu", "--seed", "0", *args]) == 0
        assert (run / model / "last.json").exists()
        assert len((run / model / "metrics.jsonl").read_text().splitlines()) == 1
    # resuming a finished run trains nothing more and keeps the checkpoint loadable
    assert main(["maze", "train", "--model", "dt", "--width", "8", "--train-size", "5", "--train-count", "64",
                 "--epochs", "1", "--batch-size", "32", "--set", "train_iters=3", "--out", str(run / "dt"),
                 "--resume", "--device", "cpu", *args]) == 0
    out = tmp_path / "eval"
    assert main(["maze", "eval", str(run / "dt" / "last"), str(run / "deq" / "last"), "--sizes", "5", "7",
                 "--limit-per-size", "6", "--max-iters", "12", "--aa-count", "4", "--out", str(out),
                 "--device", "cpu", *args]) == 0
    res = json.loads((out / "eval.json").read_text())
    for r in res.values():
        row = r["sizes"]["7"]
        assert row["n"] == 6 and row["image_px"] == 20 and row["aa_n"] == 4 and -1 <= row["aa_score"] <= 1
        assert row["curve_iters"][-1] == 12 and 0 <= row["accuracy"] <= 1
    assert (out / "accuracy_vs_size.png").exists() and (out / "accuracy_vs_iters.png").exists()
    show = tmp_path / "show"
    assert main(["maze", "show", str(run / "deq" / "last"), "--size", "7", "--max-iters", "10",
                 "--out", str(show), "--device", "cpu", *args]) == 0
    assert len(list(show.glob("*.png"))) == 1 and len(list(show.glob("*.gif"))) == 1
    assert main(["maze", "eval", str(tmp_path / "missing"), "--sizes", "5", "--out", str(out), *args]) == 1


def test_tiny_training_run_solves_most_5x5_mazes(tmp_path, cache):
    """DT-recall, width 16, one residual block, 10 iterations, 630 steps: ~50 s of one CPU core.

    A step count rather than a time budget, so that the outcome does not depend on machine load."""
    from deqnca.tasks.maze.model import quick_accuracy
    from deqnca.tasks.maze.task import MazeConfig as MazeTrainConfig
    from deqnca.tasks.maze.task import train_maze

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # deterministic, and faster than 2 threads for these small convolutions
    cfg = MazeTrainConfig(train_size=5, train_count=2000, epochs=10, batch_size=32, lr=5e-3,
                          warmup_steps=100, val_count=50)
    result = train_maze(model_of("dt", width=16, blocks=1, train_iters=10), cfg, tmp_path / "run",
                        cache=cache, log=lambda s: None)
    torch.set_num_threads(threads)
    test = mazes.load_set(5, 400, "test", seed=1, cache=cache)     # mazes never seen in training or validation
    assert quick_accuracy(result["model"], test, max_iter=10) > 0.5


def test_shipped_dt_model_solves_9x9_mazes(cache):

    from deqnca import load
    from deqnca.tasks.maze.evaluate import evaluate_size

    model, meta = load(models_dir() / "maze" / "dt")
    assert meta["provenance"]["machine"].startswith("NVIDIA") and "optimizer" not in meta
    r = evaluate_size(model, mazes.load_set(9, 40, "test", cache=cache), max_iters=30, aa_count=4)
    assert r["accuracy"] >= 0.95                                  # docs/mazes.md: 100% of 1,000


# ---- maze distributions --------------------------------------------------------------------------

OTHER_GENERATORS = [g for g in mazes.GENERATORS if g != "dfs"]


def test_default_generator_is_byte_identical_to_the_benchmark_sets():
    """SHA-256 of the first 5 layouts of three depth-first sets, computed before there were other
    generators: cached sets and the numbers in docs/mazes.md depend on them."""
    import hashlib

    pinned = {(9, "test", 0): "bacd413fd152109cf7995a935b657f3bb98a6aa686349a5dda52b96aaf6bf555",
              (19, "train", 3): "9d477c2a39f9c8bec3e8988d5941c31bb39fe895b80e036a93a4f9100422f720",
              (59, "test", 1): "c97faa704b3260658c4edd31753b101727a2ce2696054f9a4fe15ff22ed704b5"}
    for (size, split, seed), digest in pinned.items():
        for generator in ({}, {"generator": "dfs"}):
            layouts = mazes.generate_set(size, 5, split, seed, **generator)
            assert hashlib.sha256(layouts.tobytes()).hexdigest() == digest
    assert mazes.cache_path("c", "test", 9, 0).name == "mazes-v1-test-size9-seed0.npz"


@pytest.mark.parametrize("generator", OTHER_GENERATORS)
@pytest.mark.parametrize("size", [3, 5, 9, 19])
def test_every_generator_makes_perfect_mazes_whose_target_is_the_bfs_path(generator, size):
    for layout in mazes.generate_set(size, 20, "test", seed=3, generator=generator):
        assert analysis.is_perfect(layout)          # open cells and passages: a spanning tree of the cells
        kind = layout & mazes.KIND_MASK
        assert (kind == mazes.START).sum() == 1 and (kind == mazes.GOAL).sum() == 1
        assert np.array_equal((layout & mazes.ON_PATH) > 0, analysis.bfs_path(layout))


@pytest.mark.parametrize("generator", OTHER_GENERATORS)
def test_other_generators_are_deterministic_paired_and_distinct(generator):
    a = mazes.generate_set(19, 20, "test", seed=0, generator=generator)
    assert np.array_equal(a, mazes.generate_set(19, 20, "test", seed=0, generator=generator))
    assert np.array_equal(a[5:], mazes.generate_set(19, 15, "test", seed=0, first=5, generator=generator))
    assert np.array_equal(a[:4], mazes._generate_range(("test", 0, 19, 0, 4, generator)))   # the worker's path
    assert not np.array_equal(a, mazes.generate_set(19, 20, "train", seed=0, generator=generator))
    assert len({m.tobytes() for m in a}) == 20
    # the same random stream as depth-first: maze i has the same start and goal, other walls
    dfs = mazes.generate_set(19, 20, "test", seed=0)
    kind, dkind = a & mazes.KIND_MASK, dfs & mazes.KIND_MASK
    for mark in (mazes.START, mazes.GOAL):
        assert np.array_equal(kind == mark, dkind == mark)
    assert not any(np.array_equal(x, y) for x, y in zip(a, dfs))


def test_unknown_generator_is_a_one_line_error(cache):
    with pytest.raises(ValueError, match="choose one of dfs, prim"):
        mazes.load_set(9, 2, "test", cache=cache, generator="eller")


def test_cache_keeps_generators_apart(cache):
    dfs = mazes.load_set(9, 6, "test", cache=cache)
    prim = mazes.load_set(9, 6, "test", cache=cache, generator="prim")
    path = mazes.cache_path(cache, "test", 9, 0, "prim")
    assert path.name == "mazes-prim-v1-test-size9-seed0.npz" and path.exists()
    assert not np.array_equal(dfs, prim)
    with np.load(path) as f:
        assert str(f["generator"]) == "prim"
    assert np.array_equal(mazes.load_set(9, 6, "test", cache=cache, generator="prim"), prim)
    dfs_path = mazes.cache_path(cache, "test", 9, 0)
    path.replace(dfs_path)                           # a Prim set under the depth-first name
    with pytest.warns(UserWarning, match="expected"):
        assert np.array_equal(mazes.load_set(9, 6, "test", cache=cache), dfs)
    # a depth-first file written before there were other generators (no "generator" entry) is used as is
    with open(dfs_path, "wb") as fh:
        np.savez_compressed(fh, layouts=dfs, version=1, split="test", seed=0, size=9,
                            sha256=mazes.layouts_digest(dfs))
    before = dfs_path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(mazes.load_set(9, 6, "test", cache=cache), dfs)
    assert dfs_path.read_bytes() == before
    # one without a content hash cannot be checked: it is regenerated (and then carries one)
    with open(dfs_path, "wb") as fh:
        np.savez_compressed(fh, layouts=dfs, version=1, split="test", seed=0, size=9)
    with pytest.warns(UserWarning, match="without a content hash"):
        assert np.array_equal(mazes.load_set(9, 6, "test", cache=cache), dfs)
    with np.load(dfs_path) as f:
        assert str(f["sha256"]) == mazes.layouts_digest(dfs)


def test_maze_statistics_of_a_hand_made_maze(monkeypatch):
    import random

    # 3x3 cells: the centre joined to its four neighbours, each of those to one corner (a pinwheel)
    edges = [(4, 1), (4, 3), (4, 5), (4, 7), (1, 0), (5, 2), (3, 6), (7, 8)]
    monkeypatch.setitem(mazes.GENERATORS, "pinwheel", lambda n, start, rng: carvers._root(n, edges, start))
    layout = mazes.generate_maze(5, random.Random(0), "pinwheel")
    assert analysis.is_perfect(layout)
    st = analysis.maze_statistics(layout)
    path_cells = int(analysis.bfs_path(layout)[1::2, 1::2].sum())
    assert (st["dead_ends"], st["branch_points"], st["crossings"]) == (4, 0, 1)
    assert st["cells"] == 9 and st["dead_ends_per_cell"] == 4 / 9
    assert st["path_cells"] == path_cells and st["path_frac"] == path_cells / 9


def test_maze_statistics_differ_as_documented():
    """docs/mazes.md, "Maze distributions": depth-first has the fewest dead ends, branch points and
    crossings and by far the longest paths; Prim the most dead ends and the shortest paths."""
    st = {g: analysis.maze_statistics(mazes.generate_set(19, 150, "test", generator=g)) for g in mazes.GENERATORS}
    for s in st.values():
        # in a tree, leaves = 2 + sum over branching cells of (degree - 2)
        assert s["dead_ends"] == pytest.approx(2 + s["branch_points"] + 2 * s["crossings"])
    dfs = st["dfs"]
    assert dfs["dead_ends_per_cell"] < 0.15 and dfs["crossings_per_cell"] < 0.005
    for g in OTHER_GENERATORS:
        assert st[g]["dead_ends_per_cell"] > dfs["dead_ends_per_cell"] + 0.1
        assert st[g]["branch_points_per_cell"] > dfs["branch_points_per_cell"] + 0.08
        assert st[g]["crossings_per_cell"] > dfs["crossings_per_cell"] + 0.015
        assert st[g]["path_frac"] < dfs["path_frac"] / 2
    middle = ("kruskal", "wilson", "division")
    assert st["prim"]["dead_ends_per_cell"] > max(st[g]["dead_ends_per_cell"] for g in middle) + 0.03
    assert st["prim"]["path_frac"] < min(st[g]["path_frac"] for g in middle)


class _FakeDT(torch.nn.Module):
    """A 'dt' model whose step ignores the state (state = 3 x the start block: path independent) or,
    with identity=True, keeps it (state = its initial state: as path dependent as can be)."""

    def __init__(self, identity=False):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(model="dt", tol=1e-3)
        self.identity = identity

    def _start_block(self, x):
        # 4 pixels of 3.0: the normalised state is exactly 0.5 there, so the cosine is exactly 1
        green = (x[:, 0] == 0) & (x[:, 1] == 1) & (x[:, 2] == 0)
        return 3.0 * green[:, None].float()

    def step_map(self, x):
        return (lambda z: z) if self.identity else (lambda z: self._start_block(x))

    def inference_state(self, x):
        return self._start_block(x) if self.identity else torch.zeros_like(x[:, :1])

    def head(self, z):
        return torch.cat([z, -z], 1)              # never "path": accuracy is not the point here


def test_aa_score_is_exactly_one_for_a_path_independent_model():
    from deqnca.tasks.maze.evaluate import evaluate_size

    layouts = mazes.generate_set(9, 6, "test")
    r = evaluate_size(_FakeDT(), layouts, max_iters=3, aa_count=6)
    assert r["aa_n"] == 6 and r["aa_score"] == 1.0
    # the identity rule ends where it starts: maze a re-solved from maze a-1's state ends in that
    # state, cosine 1 if the two start blocks coincide and 0 if not
    starts = [tuple(np.argwhere((lay & mazes.KIND_MASK) == mazes.START)[0]) for lay in layouts]
    same = [starts[a] == starts[a - 1] for a in range(6)]
    assert sum(same) < 6
    aa = evaluate_size(_FakeDT(identity=True), layouts, max_iters=3, aa_count=6)["aa_score"]
    assert aa == pytest.approx(sum(same) / 6)


@pytest.mark.parametrize("name", ["geodesic", "geodesic-mix"])
def test_shipped_geodesic_models_reach_their_exact_fixed_point_and_solve_9x9_mazes(name, cache):
    """The shipped equilibrium solvers (trained on <= 13x13, docs/mazes.md): every maze solved exactly to its
    fixed point (relative residual 0) within the rule's bound, AA 1, and the 9x9 mazes solved
    (docs: 100% of 1,000 on each generator)."""
    from deqnca import load
    from deqnca.tasks.maze.evaluate import default_max_iters, evaluate_size

    model, meta = load(models_dir() / "maze" / name)
    assert meta["provenance"]["machine"].startswith("AMD EPYC") and "optimizer" not in meta
    for generator in ("dfs", "kruskal"):
        r = evaluate_size(model, mazes.load_set(9, 40, "test", cache=cache, generator=generator),
                          max_iters=default_max_iters(9, model), aa_count=4)
        assert r["accuracy"] == 1.0 and r["rel_residual_median"] == 0.0 and r["converged_frac"] == 1.0
        assert 20 < r["mean_iters"] <= r["most_iters"] < r["max_iters"] and r["aa_score"] == pytest.approx(1, abs=1e-12)


def test_evaluation_names_the_mazes_it_failed(cache):
    """`failed` lists the wrong mazes by their index in the test set (what `maze show --index` takes), across
    batches; checked against each maze solved on its own."""
    from deqnca import load
    from deqnca.core.solvers import rollout
    from deqnca.tasks.maze.evaluate import evaluate_size
    from deqnca.tasks.maze.model import predict

    model, _ = load(models_dir() / "maze" / "dt")
    layouts = mazes.load_set(9, 12, "test", cache=cache)
    r = evaluate_size(model, layouts, max_iters=20, aa_count=0, batch=5)
    wrong, pixels = [], []
    for i in range(len(layouts)):
        x, y = mazes.to_images(torch.as_tensor(layouts[i:i + 1]))
        z, _ = rollout(model.step_map(x), model.inference_state(x), 20, measure=False)
        bad = int((predict(model.head(z), x) != y.bool()).sum())
        if bad:
            wrong.append(i)
            pixels.append(bad)
    assert 0 < len(wrong) < len(layouts), "20 steps should solve some 9x9 mazes and not others"
    assert r["failed"] == wrong and r["n_failed"] == len(wrong) and r["failed_pixels"] == pixels
    assert r["accuracy"] == pytest.approx(1 - len(wrong) / len(layouts))
    end_only = evaluate_size(model, layouts, max_iters=20, aa_count=0, batch=5, curve=False)
    assert end_only["curve_iters"] == [20] and len(r["curve_iters"]) > 3
    assert {k: end_only[k] for k in ("failed", "failed_pixels", "accuracy")} == \
        {k: r[k] for k in ("failed", "failed_pixels", "accuracy")}


def test_error_spots_group_the_wrong_pixels_largest_first():
    from deqnca.tasks.maze.pictures import error_spots

    wrong = torch.zeros(40, 40, dtype=torch.bool)
    wrong[5, 5] = wrong[5, 6] = wrong[6, 5] = True           # one group of 3
    wrong[30, 20] = True                                      # one of 1
    assert error_spots(wrong, radius=3) == [(16 / 3, 16 / 3, 3), (30.0, 20.0, 1)]
    assert error_spots(torch.zeros(4, 4, dtype=torch.bool), radius=3) == []


def test_evaluate_checkpoints_on_several_distributions(tmp_path, cache):

    from deqnca.tasks.maze.evaluate import evaluate_checkpoints

    ckpt = models_dir() / "maze" / "dt"
    res = evaluate_checkpoints([ckpt], [5], {5: 3}, {5: 3}, "cpu", tmp_path / "eval", aa_count=2, cache=cache,
                               log=lambda s: None, generators=("dfs", "prim"))
    r = res[str(ckpt)]
    assert set(r["by_generator"]) == {"dfs", "prim"} and r["sizes"] is r["by_generator"]["dfs"]
    assert r["by_generator"]["prim"][5]["n"] == 3
    assert mazes.cache_path(cache, "test", 5, 0, "prim").exists()
    table = (tmp_path / "eval" / "accuracy_by_generator.md").read_text().splitlines()
    assert len(table) == 4 and "| prim |" in table[3]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())[str(ckpt)]
    assert saved["sizes"] == saved["by_generator"]["dfs"]


def test_an_evaluation_extended_in_parts_is_the_whole_evaluation(tmp_path, cache):
    """`maze eval --first N` evaluates the next mazes; the campaign's merge of the parts gives the whole set's row."""
    import importlib.util
    from pathlib import Path

    from deqnca.tasks.maze.evaluate import evaluate_checkpoints

    spec = importlib.util.spec_from_file_location("maze_campaign", Path(__file__).parents[1] / "scripts" /
                                                  "maze_campaign.py")
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)
    ckpt = models_dir() / "maze" / "dt"

    def part(first, n):
        res = evaluate_checkpoints([ckpt], [9], {9: n}, {9: 20}, "cpu", tmp_path / f"e{first}", aa_count=2,
                                   cache=cache, log=lambda s: None, first=first)
        return {"name": "dt", "generator": "dfs", "size": 9, "row": res[str(ckpt)]["sizes"][9], "seconds": 1.0,
                "command": f"part {first}", "date": "2026-12-02"}

    whole, a, b = part(0, 12), part(0, 5), part(5, 7)
    assert b["row"]["first"] == 5 and all(i >= 5 for i in b["row"]["failed"])
    merged = campaign.merge(a, b)["row"]
    assert 0 < whole["row"]["n_failed"] < 12, "20 steps should solve some 9x9 mazes and not others"
    for key in ("n", "failed", "failed_pixels", "n_failed", "most_iters", "curve_iters"):
        assert merged[key] == whole["row"][key], key
    for key in ("accuracy", "best_accuracy", "mean_iters"):
        assert merged[key] == pytest.approx(whole["row"][key]), key
    assert merged["curve_accuracy"] == pytest.approx(whole["row"]["curve_accuracy"])
    with pytest.raises(ValueError, match="do not follow"):
        campaign.merge(a, part(6, 2))


def test_training_reads_its_generator(tmp_path, cache):
    from deqnca.tasks.maze.task import MazeConfig as MazeTrainConfig
    from deqnca.tasks.maze.task import train_maze

    cfg = MazeTrainConfig(train_size=5, train_count=8, epochs=1, batch_size=8, val_count=4, generator="kruskal")
    train_maze(model_of("dt", width=4, blocks=1, train_iters=2), cfg, tmp_path / "run", cache=cache,
               log=lambda s: None)
    assert mazes.cache_path(cache, "train", 5, 0, "kruskal").exists()
    assert mazes.cache_path(cache, "test", 5, 0, "kruskal").exists()
    assert not mazes.cache_path(cache, "train", 5, 0).exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["generator"] == "kruskal"


def _pixel_bfs(open_, src):
    """Hop distances from the pixels of mask `src` through the open pixels of one image (4-neighbours)."""
    from collections import deque

    dist = np.full(open_.shape, -1)
    todo = deque(map(tuple, np.argwhere(src)))
    for p in todo:
        dist[p] = 0
    while todo:
        p = todo.popleft()
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (p[0] + d[0], p[1] + d[1])
            if 0 <= q[0] < open_.shape[0] and 0 <= q[1] < open_.shape[1] and open_[q] and dist[q] < 0:
                dist[q] = dist[p] + 1
                todo.append(q)
    return dist


def test_geodesic_rule_fixed_point_is_the_exact_distance_and_is_reached_from_any_state():
    """rules/geodesic.py: whatever the weights, one fixed point, reached exactly (residual 0, bit for bit)
    from zeros, from noise and from another maze's fixed point; with unit costs and the start as the only
    emitter it is Z minus the hop distance to the start, however far (no contraction damps it)."""
    from deqnca.core.rules import make_rule
    from deqnca.core.solvers import fixed_point

    torch.manual_seed(0)
    x, _ = mazes.to_images(mazes.generate_set(19, 2, "test"))
    rule = make_rule("geodesic", input_channels=3, state_channels=3, cost_min=1.0, cost_max=1.0)
    with torch.no_grad():
        rule.encode.weight.zero_()
        rule.encode.weight[0, :, 0, 0] = torch.tensor([-1.0, 1.0, -1.0])      # channel 0: the start (green) emits
        rule.encode.bias[0] = -0.5
    f = rule.bind(x)
    top = rule.ceiling(x)
    bound = rule.steps_bound(*x.shape[-2:])
    z0, st = fixed_point(f, torch.zeros(2, 3, *x.shape[-2:]), bound, tol=1e-12)
    assert st.nstep < bound and (st.rel_residual == 0).all() and torch.equal(f(z0), z0)
    for start in (top * torch.rand_like(z0), z0.roll(1, 0)):        # noise; the other maze's fixed point
        z, st = fixed_point(f, start, bound, tol=1e-12)
        assert (st.rel_residual == 0).all() and torch.equal(z, z0)
    img = x[0].numpy()
    open_ = img.max(0) > 0
    dist = _pixel_bfs(open_, (img[0] == 0) & (img[1] == 1))
    assert dist.max() > 150                                            # the far end of a 44x44 maze
    expect = np.where(open_, top - dist, 0.0)
    assert np.array_equal(z0[0, 0].numpy(), expect.astype(np.float32))


def test_sparse_residual_checks_reach_the_same_geodesic_fixed_point(cache):
    """`check_every` (the geodesic model's test-time solve): the same states bit for bit as checking every
    step, each maze's step count rounded up to a check, never below the exact one."""
    from deqnca import load
    from deqnca.tasks.maze.evaluate import default_max_iters

    model, _ = load(models_dir() / "maze" / "geodesic")
    x, _ = mazes.to_images(torch.as_tensor(mazes.load_set(13, 6, "test", cache=cache)))
    f, z0, cap = model.step_map(x), model.inference_state(x), default_max_iters(13, model)
    every, e_stats = get_solver("fixed_point")(f, z0, cap, tol=model.config.tol)
    sparse, s_stats = get_solver("fixed_point")(f, z0, cap, tol=model.config.tol, check_every=8)
    assert torch.equal(every, sparse) and (s_stats.rel_residual == 0).all()
    exact, rounded = e_stats.sample_steps, s_stats.sample_steps
    assert (exact > 0).all() and len(set(exact.tolist())) > 1
    assert ((rounded >= exact) & (rounded < exact + 8) & (rounded % 8 == 0)).all()


def test_the_compiled_geodesic_step_reaches_the_same_fixed_point_bit_for_bit(cache):
    """`maze eval --compile`: the fused step rounds like the eager one, so the solve is the same."""
    from deqnca import load
    from deqnca.tasks.maze.model import solve_for_eval

    eager, _ = load(models_dir() / "maze" / "geodesic")
    compiled, _ = load(models_dir() / "maze" / "geodesic")
    assert compiled.compile_for_eval() and compiled.rule._compiled is not None
    x, _ = mazes.to_images(torch.as_tensor(mazes.load_set(13, 4, "test", cache=cache, generator="prim")))
    z1, s1 = solve_for_eval(eager, x, 2000, solver="fixed_point")
    z2, s2 = solve_for_eval(compiled, x, 2000, solver="fixed_point")
    assert torch.equal(z1, z2) and torch.equal(s1.sample_steps, s2.sample_steps) and (s2.rel_residual == 0).all()
    z3, s3 = solve_for_eval(compiled, x, 2000, solver="wavefront")       # its dense steps are the compiled ones
    assert torch.equal(z1, z3) and (s3.rel_residual == 0).all()


def _d4(t, k, flip):
    t = torch.rot90(t, k, (-2, -1))
    return t.flip(-1) if flip else t


def test_dihedral_mean_is_equivariant_for_any_map():
    """g·S(z) = S(g·z) for the 8 rotations/reflections g, for a map that is not equivariant itself."""
    from deqnca.core.readout import dihedral_mean

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    z = torch.randn(2, 3, 7, 9)
    sym = dihedral_mean(conv, z)
    assert sym.shape == (2, 2, 7, 9)
    assert not torch.allclose(conv(_d4(z, 1, False)), _d4(conv(z), 1, False), atol=1e-3)
    for k in range(4):
        for flip in (False, True):
            assert torch.allclose(dihedral_mean(conv, _d4(z, k, flip)), _d4(sym, k, flip), atol=1e-5)


def test_symmetrised_geodesic_read_out_makes_the_whole_model_equivariant(cache):
    """The geodesic rule is equivariant (rotating a maze rotates its exact fixed point, bit for bit); with the d4
    read-out, so is the answer; the learned read-out alone is not."""
    from deqnca import load
    from deqnca.tasks.maze.model import solve_for_eval

    model, _ = load(models_dir() / "maze" / "geodesic")
    assert model.config.readout_symmetry == "d4"                # as shipped (docs/mazes.md)
    model.set_readout_symmetry("none")
    x, _ = mazes.to_images(torch.as_tensor(mazes.load_set(13, 3, "test", cache=cache, generator="prim")))
    z, _ = solve_for_eval(model, x, 4000)
    zr, _ = solve_for_eval(model, _d4(x, 1, True), 4000)
    assert torch.equal(zr, _d4(z, 1, True))
    assert not torch.allclose(model.head(zr), _d4(model.head(z), 1, True), atol=1e-3)
    model.set_readout_symmetry("d4")
    assert model.config.readout_symmetry == "d4"
    assert torch.allclose(model.head(zr), _d4(model.head(z), 1, True), atol=1e-4)


def test_readout_symmetry_is_checked():
    from deqnca.tasks.maze.model import MazeSolverNet

    with pytest.raises(ValueError, match="choose one of none, d4"):
        MazeSolverNet(model_of("geodesic", width=2, readout_symmetry="c4"))
    dt = MazeSolverNet(model_of("dt", width=4))
    with pytest.raises(ValueError, match="equivariant"):
        dt.set_readout_symmetry("d4")
    assert dt.config.readout_symmetry == "none"


def test_cli_eval_and_show_with_the_symmetrised_read_out(tmp_path, cache, capsys):
    from deqnca.cli import main

    geo, args = str(models_dir() / "maze" / "geodesic"), ["--device", "cpu", "--cache", str(cache)]
    assert main(["maze", "eval", geo, "--sizes", "9", "--limit-per-size", "5", "--aa-count", "0",
                 "--readout-symmetry", "d4", "--out", str(tmp_path / "eval"), *args]) == 0
    row = json.loads((tmp_path / "eval" / "eval.json").read_text())[geo]["sizes"]["9"]
    assert row["readout_symmetry"] == "d4" and row["accuracy"] == 1.0
    assert main(["maze", "show", geo, "--size", "5", "--readout-symmetry", "d4", "--out", str(tmp_path / "show"),
                 *args]) == 0
    assert [f.name for f in (tmp_path / "show").glob("*.png")] == ["geodesic-d4-size5-0.png"]
    capsys.readouterr()
    assert main(["maze", "eval", str(models_dir() / "maze" / "dt"), "--sizes", "5", "--limit-per-size", "2",
                 "--readout-symmetry", "d4", "--out", str(tmp_path / "eval"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is for the geodesic and trace models" in err[0]
    # shipping a model with or without the symmetrised read-out: the weights unchanged, the config says which
    from deqnca import load
    assert main(["export", geo, str(tmp_path / "plain"), "--readout-symmetry", "none"]) == 0
    plain, meta = load(tmp_path / "plain")
    assert plain.config.readout_symmetry == "none"
    assert meta["weights_sha256"] == json.loads((models_dir() / "maze" / "geodesic.json").read_text())["weights_sha256"]
    capsys.readouterr()
    assert main(["export", str(models_dir() / "mnist-essay"), str(tmp_path / "m"), "--readout-symmetry", "d4"]) == 2
    assert "only maze checkpoints" in capsys.readouterr().err


def test_tiny_equilibrium_training_solves_most_5x5_mazes(tmp_path, cache):
    """The geodesic preset (width 8), 250 steps of 32 mazes of size 5: ~20 s of one CPU core; every
    held-out maze reaches its fixed point exactly (residual 0), and from noise reaches the same answer."""
    from deqnca.core.solvers import fixed_point
    from deqnca.tasks.maze.model import predict, quick_accuracy
    from deqnca.tasks.maze.task import MazeConfig as MazeTrainConfig
    from deqnca.tasks.maze.task import train_maze

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = MazeTrainConfig(train_size=5, train_count=1000, epochs=8, batch_size=32, lr=5e-3, warmup_steps=50,
                          val_count=50)
    result = train_maze(model_of("geodesic", width=8), cfg, tmp_path / "run", cache=cache, log=lambda s: None)
    torch.set_num_threads(threads)
    model = result["model"]
    test = mazes.load_set(5, 400, "test", seed=1, cache=cache)      # mazes never seen in training or validation
    assert quick_accuracy(model, test, max_iter=model.rule.steps_bound(16, 16)) >= 0.8
    x, _ = mazes.to_images(test[:50])
    with torch.no_grad():
        f = model.step_map(x)
        z, st = fixed_point(f, torch.zeros(50, 8, 16, 16), 500, tol=1e-12)
        z2, _ = fixed_point(f, model.rule.ceiling(x) * torch.rand_like(z), 2000, tol=1e-12)
        assert (st.rel_residual == 0).all() and torch.equal(z, z2)
        assert torch.equal(predict(model.head(z), x), predict(model.head(z2), x))


def test_batch_plan_keeps_one_sets_order_and_shuffles_several_sizes_together():
    from deqnca.engine.trainer import epoch_order
    from deqnca.tasks.maze.task import batch_plan

    one = batch_plan([10], 4, 3, 2)              # a single size: the order the task always had
    assert [k for k, _ in one] == [0, 0, 0]
    assert torch.equal(torch.cat([r for _, r in one]), epoch_order(10, 3, 2))
    two = batch_plan([10, 6], 4, 3, 2)
    assert sorted(k for k, _ in two) == [0, 0, 0, 1, 1]
    for k, n in ((0, 10), (1, 6)):               # every maze of every set once per epoch
        assert sorted(torch.cat([r for j, r in two if j == k]).tolist()) == list(range(n))
    assert [k for k, _ in two] == [0, 0, 1, 1, 0]                            # the sizes interleaved
    assert [(k, r.tolist()) for k, r in two] == [(k, r.tolist()) for k, r in batch_plan([10, 6], 4, 3, 2)]


def test_training_on_several_sizes_and_the_generator_mixture(tmp_path, cache):
    from deqnca.tasks.maze.task import MazeConfig as MazeTrainConfig
    from deqnca.tasks.maze.task import load_mixed, train_maze

    mixed = load_mixed(5, 12, "test", "mix", cache)
    assert len(mixed) == 12
    for i, g in enumerate(mazes.GENERATORS):      # maze 0 of every generator in turn, then maze 1, ...
        assert np.array_equal(mixed[i], mazes.load_set(5, 1, "test", cache=cache, generator=g)[0])
    cfg = MazeTrainConfig(train_size=7, train_sizes=[5], train_count=10, epochs=1, batch_size=5, val_count=5,
                          generator="mix")
    result = train_maze(model_of("geodesic", width=2), cfg, tmp_path / "run", cache=cache, log=lambda s: None)
    assert result["global_step"] == 4                                        # 2 sizes x 10 mazes / 5
    for g in mazes.GENERATORS:
        assert mazes.cache_path(cache, "train", 5, 0, g).exists() and mazes.cache_path(cache, "train", 7, 0, g).exists()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["train_sizes"] == [5] and saved["generator"] == "mix"
