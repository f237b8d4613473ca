"""The trace rule (tasks/maze/trace.py): floods plus traces between them on the layout's grid. Its fixed point is
unique and reached exactly from any state, and with a flood at the start and one at the goal its trace marks
exactly the unique shortest path of mazes with loops and of percolation mazes, nothing outside the start's region;
the image <-> layout grid maps are exact; a tiny training on 5x5 mazes with loops learns it."""
from __future__ import annotations

import pytest
import torch

from deqnca.core.solvers import get_solver
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.config import PRESETS
from deqnca.tasks.maze.model import MazeSolverNet, predict, to_cells, to_pixels
from deqnca.tasks.maze.trace import emit_at_start_and_goal, pairs


def hand_set(model):
    """A trace model whose flood 0 emits at the start, flood 1 at the goal (`emit_at_start_and_goal`)."""
    emit_at_start_and_goal(model.rule)
    return model.eval()


def reading_the_trace(model):
    """`hand_set`'s model with a read-out that marks where trace (0, 1) reached: path logit 2·[traced], no-path
    logit [flood 0 reached] (the start's region); outside the region both are 0 and argmax says no path."""
    conv1, conv2, conv3 = [m for m in model.head.layers.layers if isinstance(m, torch.nn.Conv2d)]
    traced = model.rule.floods + pairs(model.rule.floods).index((0, 1))      # its reached bit's feature channel
    with torch.no_grad():
        for conv in (conv1, conv2, conv3):
            conv.weight.zero_()
        conv1.weight[0, traced, 1, 1] = conv1.weight[1, 0, 1, 1] = 1.0
        conv2.weight[0, 0, 1, 1] = conv2.weight[1, 1, 1, 1] = 1.0
        conv3.weight[1, 0, 1, 1], conv3.weight[0, 1, 1, 1] = 2.0, 1.0
    return model


def trace_model(**kw):
    return MazeSolverNet({**PRESETS.build("trace").model, **kw})


def path_cells(layouts):
    return torch.as_tensor((layouts & mazes.ON_PATH) > 0)


def test_the_grid_maps_are_exact_on_benchmark_images():
    layouts = mazes.generate_set(9, 3, generator="dfs+loops=0.1")
    x, y = mazes.to_images(torch.as_tensor(layouts))
    cells = to_cells(x)
    assert cells.shape[-2:] == layouts.shape[-2:]
    assert torch.equal(cells, torch.as_tensor(mazes.PALETTE)[torch.as_tensor(layouts & 3).long()].permute(0, 3, 1, 2))
    logits = torch.stack([torch.zeros_like(path_cells(layouts), dtype=torch.float), path_cells(layouts).float()], 1)
    assert torch.equal(predict(to_pixels(logits * 10 - 5), x), y.bool())


@pytest.mark.parametrize("spec", ["dfs+loops=0.1+anywhere", "prim+loops=0.05", "percolation+p=0.4",
                                  "percolation+p=0.6", "wilson"])
def test_the_trace_marks_exactly_the_unique_shortest_path(spec):
    layouts = mazes.generate_set(13, 24, generator=spec)
    model = hand_set(trace_model())
    x, _ = mazes.to_images(torch.as_tensor(layouts))
    z, stats = model.solve(x)
    assert float(stats.rel_residual.max()) == 0                   # exactly at the fixed point
    traced = z[:, model.rule.floods + pairs(model.rule.floods).index((0, 1))] > 0
    assert torch.equal(traced, path_cells(layouts))              # nothing else: not the loops, not other regions


def test_the_fixed_point_is_unique_and_reached_exactly_from_any_state():
    torch.manual_seed(0)
    model = trace_model(rule_kw={"cost_min": 1.0, "cost_max": 2.0})
    with torch.no_grad():                                        # random emitters and costs: any weights
        model.rule.encode.weight.normal_(0, 2)
        model.rule.encode.bias.normal_(0, 1)
    model.eval()
    x, _ = mazes.to_images(torch.as_tensor(mazes.generate_set(9, 4, generator="percolation+p=0.6")))
    f = model.step_map(x)
    top = model.rule.ceiling(to_cells(x))
    starts = [model.inference_state(x), torch.rand_like(model.inference_state(x)) * top]
    ends = []
    for z0 in starts:
        z, stats = get_solver("fixed_point")(f, z0, max_iter=model.rule.steps_bound(11, 11), tol=1e-12)
        assert torch.equal(f(z), z)                              # a fixed point, bit for bit
        ends.append(z)
    assert torch.equal(*ends)


def test_bad_trace_options_are_one_line_errors():
    with pytest.raises(ValueError, match="at least 2 floods"):
        trace_model(width=1)
    with pytest.raises(ValueError, match="cost_min"):
        trace_model(rule_kw={"cost_min": 0.0})


@pytest.mark.slow
def test_a_tiny_training_on_5x5_mazes_with_loops_learns_the_trace(tmp_path):
    from deqnca.tasks.maze.config import MazeConfig
    from deqnca.tasks.maze.task import train_maze

    # 300 steps; an untrained model solves none of these mazes (its emitters are random), and the straight-through
    # emitters make a run depend on the float order (the threads): a wide margin
    cfg = MazeConfig(train_size=5, train_count=4800, epochs=2, batch_size=32, lr=1e-2, val_count=200,
                     generator="dfs+loops=0.2+anywhere,percolation+p=0.6")
    torch.manual_seed(0)
    summary = train_maze(PRESETS.build("trace").model, cfg, tmp_path / "run", cache=tmp_path / "cache",
                         log=lambda *a: None)
    last = summary["history"][-1]
    assert last["val_solved_5"] >= 0.25, last


def test_eval_counts_marks_outside_the_start_region():
    from deqnca.tasks.maze.evaluate import evaluate_size, start_regions

    layouts = mazes.generate_set(13, 16, generator="percolation+p=0.4")
    x, y = mazes.to_images(torch.as_tensor(layouts))
    region = start_regions(layouts)
    assert (region <= (x.amax(1) > 0)).all() and (y.bool() <= region).all()
    assert ((x.amax(1) > 0) & ~region).flatten(1).any(1).float().mean() > 0.5   # most have regions cut off
    row = evaluate_size(reading_the_trace(hand_set(trace_model())), layouts, max_iters=400, aa_count=4)
    assert row["accuracy"] == 1.0 and row["marked_outside"] == 0 and row["aa_score"] == pytest.approx(1.0)
