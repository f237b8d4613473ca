"""The wavefront solver (tasks/maze/wavefront.py) is Picard iteration of the max-plus maze rules evaluated only
where the state can change: the same states bit for bit (torch.equal), the same step counts, on random maps and
on real mazes, for the geodesic and the trace rule."""
import pytest
import torch

from deqnca.core.solvers import fixed_point, get_solver
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze.config import PRESETS
from deqnca.tasks.maze.geodesic import _step
from deqnca.tasks.maze.model import MazeSolverNet, solve_for_eval, to_cells
from deqnca.tasks.maze.trace import emit_at_start_and_goal, pairs, trace_step
from deqnca.tasks.maze.wavefront import NEEDS_STRUCTURE, wavefront

pytestmark = pytest.mark.usefixtures("one_thread")      # small tensors: far faster on a loaded 2-core machine
EXACT_TOL = 1e-30       # only a residual of exactly 0 is below it (a float32 change is >= 1e-7 of states <= 1e7)


def _fields(gen, B, channels, H, W, emit_rate=0.03):
    """Random emitters (anywhere, walls included), costs in [1, 2], open masks, and Z for an H×W map."""
    top = 2.0 * H * W
    open_ = (torch.rand(B, 1, H, W, generator=gen) < 0.7).float()
    s = top * (torch.rand(B, channels, H, W, generator=gen) < emit_rate).float()
    cost = 1 + torch.rand(B, 1, H, W, generator=gen)
    return s, cost, open_, top


def geodesic_map(gen, B=3, C=4, H=11, W=17):
    s, cost, open_, top = _fields(gen, B, C, H, W)

    def step(y):
        return _step(y, s, cost, open_, top)
    step.fields, step.structure = (s, cost, open_, top), "geodesic"
    return step


def trace_map(gen, B=3, P=3, H=13, W=9):
    s, cost, open_, top = _fields(gen, B, P, H, W, emit_rate=0.02)
    follow, emit_from = (torch.tensor(v) for v in zip(*pairs(P)))

    def step(y):
        return trace_step(y, s, cost, open_, top, follow, emit_from)
    step.fields, step.structure = (s, cost, open_, top), "trace"
    return step


def _start(gen, f, kind):
    s, top = f.fields[0], f.fields[3]
    B, P, H, W = s.shape
    C = P if f.structure == "geodesic" else P * P
    if kind == "zeros":
        return torch.zeros(B, C, H, W)
    if kind == "noise":                         # training's mixed state: N(0, 1), negatives included
        return torch.randn(B, C, H, W, generator=gen)
    return top * torch.rand(B, C, H, W, generator=gen)        # anywhere in [0, Z]


def assert_same_as_picard(f, z0, max_iter=100_000):
    z, st = wavefront(f, z0, max_iter, tol=EXACT_TOL)
    zp, sp = fixed_point(f, z0, max_iter, tol=EXACT_TOL)
    assert torch.equal(z, zp)
    assert st.nstep == sp.nstep
    assert torch.equal(st.sample_steps, sp.sample_steps)
    assert torch.equal(st.abs_residual, sp.abs_residual)
    return z, st


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["zeros", "state", "noise"])
@pytest.mark.parametrize("build", [geodesic_map, trace_map], ids=["geodesic", "trace"])
def test_random_maps_bit_for_bit(build, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    f = build(gen)
    z, st = assert_same_as_picard(f, _start(gen, f, kind))
    assert float(st.abs_residual.max()) == 0.0 and st.nstep > 1       # the exact fixed point, after some steps


@pytest.mark.parametrize("build", [geodesic_map, trace_map], ids=["geodesic", "trace"])
@pytest.mark.parametrize("max_iter", [1, 2, 7, 40])
def test_a_cut_off_solve_is_picards_state_too(build, max_iter):
    """Under max_iter the state, residuals, step count and per-sample steps are those of fixed_point."""
    gen = torch.Generator().manual_seed(3)
    f = build(gen)
    assert_same_as_picard(f, _start(gen, f, "state"), max_iter)


def test_one_sample_and_a_map_with_nothing_to_do():
    gen = torch.Generator().manual_seed(4)
    f = geodesic_map(gen, B=1, C=2, H=5, W=30)
    z, st = assert_same_as_picard(f, torch.zeros(1, 2, 5, 30))
    again, st2 = wavefront(f, z, 100)                      # from the fixed point: one step, nothing moves
    assert torch.equal(again, z) and st2.nstep == 1 and st2.sample_steps.tolist() == [1]


def _geodesic_model():
    import deqnca

    return deqnca.load("maze/geodesic")[0]


def _trace_model(hand_set=True, seed=0):
    torch.manual_seed(seed)
    m = MazeSolverNet(PRESETS.build("trace").model).eval()
    if hand_set:            # flood 0 emitted at the start (green), flood 1 at the goal (red), equal costs
        emit_at_start_and_goal(m.rule)
    return m


@pytest.mark.parametrize("model", ["geodesic", "trace", "trace-random"])
def test_real_mazes_bit_for_bit(model):
    m = _geodesic_model() if model == "geodesic" else _trace_model(hand_set=model == "trace")
    x, _ = mazes.to_images(torch.as_tensor(mazes.generate_set(13, 3)))
    f = m.step_map(x)
    assert_same_as_picard(f, m.inference_state(x))
    # from another maze's fixed point (the AA score's re-solve)
    z, _ = wavefront(f, m.inference_state(x), 100_000)
    assert_same_as_picard(f, torch.roll(z, 1, 0))


def test_the_trace_marks_the_bfs_shortest_path():
    m = _trace_model()
    lay = torch.as_tensor(mazes.generate_set(15, 4))
    x, _ = mazes.to_images(lay)
    z, stats = m.solve(x)                                 # eval mode: solve_for_eval, the wavefront solver
    assert float(stats.abs_residual.max()) == 0.0
    traced = z[:, 4] > 0                                  # trace (0, 1): from the goal back down the start's flood
    assert torch.equal(traced, (lay & mazes.ON_PATH) > 0)
    assert to_cells(x).shape[-2:] == traced.shape[-2:]


def test_solve_for_eval_chooses_the_solver():
    m = _trace_model()
    x, _ = mazes.to_images(torch.as_tensor(mazes.generate_set(9, 2)))
    za, sa = solve_for_eval(m, x, 10_000, solver="wavefront")
    zb, sb = solve_for_eval(m, x, 10_000, solver="fixed_point")
    assert torch.equal(za, zb)
    with pytest.raises(ValueError, match="is for the geodesic and trace models"):
        solve_for_eval(MazeSolverNet(PRESETS.build("deq").model).eval(), x, 10, solver="wavefront")


def test_a_rule_without_the_structure_is_a_clear_error():
    with pytest.raises(ValueError, match="use fixed_point") as e:
        get_solver("wavefront")(lambda z: z, torch.zeros(1, 2, 3, 3), 10)
    assert str(e.value) == NEEDS_STRUCTURE
    m = MazeSolverNet(PRESETS.build("deq").model)
    x, _ = mazes.to_images(torch.as_tensor(mazes.generate_set(9, 1)))
    with pytest.raises(ValueError, match="max-plus maze rule"):
        wavefront(m.step_map(x), m.initial_state(x, kind="zeros"), 10)


def test_the_large_maze_benchmark_runs(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import maze_801

    out = tmp_path / "bench.json"
    assert maze_801.main(["--size", "9", "--mazes", "2", "--model", "trace-hand", "--picard", "--json", str(out),
                          "--generators", "dfs", "prim+loops=0.1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert all(r["exact_fixed_point"] and r["trace_is_path"] and r["picard_same_state"] for r in rows)
    assert rows[0]["picard_steps"] > 10 and "Picard steps replaced" in capsys.readouterr().out
