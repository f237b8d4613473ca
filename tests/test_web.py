"""The live page (`deqnca web`) computes what PyTorch computes.

Every model is stepped in headless Chromium through the page's test hook (window.deqncaTest) from a
given input and initial state, and the state is compared with PyTorch's after the same steps. The
growing NCA's random fire masks are drawn by torch and handed to the page: PyTorch's own stochastic
replay (rule.stochastic_map with a seeded generator) draws the same masks from the same seed.
"""
import argparse
import math
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from deqnca.core.nca import rollout as nca_rollout
from deqnca.web import browser
from deqnca.web.cli import add_cli
from deqnca.web.export import (
    _load_models,
    build_bundle,
    default_models_dir,
    emitters,
    maze_spec,
    mnist_spec,
    write_bundle,
    write_site,
)

TOL = 1e-4      # relative error, float32 (the page stores float32 and accumulates in float64)


def _deqnca():
    """The deqnca modules these tests use besides the exporter, in one place."""
    from deqnca.core.readout import ink_mask, ink_vote
    from deqnca.engine.checkpoint import save_checkpoint
    from deqnca.tasks.maze import analysis as maze_analysis
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze import model as maze_model
    from deqnca.tasks.maze.config import PRESETS as maze_presets
    from deqnca.tasks.mnist.task import MnistConfig as TrainConfig
    from deqnca.tasks.mnist.task import train
    return types.SimpleNamespace(mazes=mazes, maze_analysis=maze_analysis, maze_model=maze_model,
                                 maze_presets=maze_presets, save_checkpoint=save_checkpoint, ink_mask=ink_mask,
                                 ink_vote=ink_vote, TrainConfig=TrainConfig, train=train)


def _train_tiny_cell_model(out, data):
    # a per-cell model only has to exist for the page: 64 images, one epoch, a few seconds
    d = _deqnca()
    config = dict(rule="contractive_tanh", rule_kw={"gamma": 0.9}, solver="rollout", solver_kw={"max_iter": 4},
                  gradient="bptt", gradient_kw={}, input_channels=4, state_channels=8, hidden=16,
                  readout="cell", readout_norm="batch")
    x, y, xt, yt = data
    cfg = d.TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=3e-3, seed=0, eval_batch_size=64)
    d.train(config, cfg, out, (x[:64], y[:64], xt[:32], yt[:32]), log=lambda s: None)
    return out / "last"


def handset_trace_model():
    """A trace model that solves mazes before it is trained: flood 0 emits at the start's colour (0, 1, 0), flood 1 at
    the goal's (1, 0, 0), floods 2 and 3 nowhere, every open cell costs the same, so trace (0, 1) (channel 4) marks
    the cells of the shortest start-to-goal paths; its head is random (seeded)."""
    d = _deqnca()
    torch.manual_seed(0)
    model = d.maze_model.MazeSolverNet(d.maze_presets.build("trace").model)
    from deqnca.tasks.maze.trace import emit_at_start_and_goal
    emit_at_start_and_goal(model.rule)
    return model.eval()


def models_folder(root, trace: bool = True):
    """The shipped models' folder (as links), with the hand-set trace model saved as `maze/trace` (trace=True) or
    without any `maze/trace` (the export leaves it out)."""
    src, out = default_models_dir(), root / "models"
    (out / "maze").mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "maze":
            (out / entry.name).symlink_to(entry)
    for entry in (src / "maze").iterdir():
        if not entry.name.startswith("trace."):
            (out / "maze" / entry.name).symlink_to(entry)
    if trace:
        _deqnca().save_checkpoint(out / "maze" / "trace", handset_trace_model(), meta={"kind": "maze"})
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, mnist_small):
    root = tmp_path_factory.mktemp("web")
    cell = _train_tiny_cell_model(root / "cell", mnist_small)
    models = _load_models(models_folder(root), cell)         # what write_site does, loading once
    index = write_bundle(root / "site", build_bundle(models))
    flat = {**{k: m for k, (m, _) in models["mnist"].items()}, "cell": models["cell"][0],
            **{k: m for k, (m, _) in models["grow"].items()}, **{k: m for k, (m, _) in models["maze"].items()}}
    return types.SimpleNamespace(index=index, models=flat)


@pytest.fixture(scope="module")
def chromium():
    why = browser.missing()
    if why:
        pytest.skip(why)
    with browser.launch() as b:
        yield b


@pytest.fixture(scope="module")
def page(chromium, site):
    with browser.open_page(chromium, site.index) as (pg, log):
        pg.evaluate("deqncaTest.pauseAll()")
        yield pg
        assert not log, log             # no console errors, no page errors, no network


def rel_err(a, b):
    a = torch.as_tensor(browser.unb64(a).copy() if isinstance(a, str) else np.asarray(a)).double()
    b = b.double().flatten()
    return ((a - b).norm() / b.norm()).item()


def run_page(page, name, steps, x=None, z0=None, fire=None, until_fixed=False):
    """The page's state after `steps` from input x and state z0 (None: the model's own start); `until_fixed`: or
    at the first step that changes nothing (a max-plus maze model)."""
    args = {"steps": steps, "x": None if x is None else browser.b64(x), "untilFixed": until_fixed,
            "z0": None if z0 is None else browser.b64(z0), "fire": None if fire is None else browser.b64(fire)}
    if x is not None:
        args.update(H=x.shape[-2], W=x.shape[-1])
    return page.evaluate("([n, a]) => deqncaTest.run(n, a)", [name, args])


def torch_rel(z, fz):
    return ((fz - z).flatten(1).norm(dim=1) / (fz.flatten(1).norm(dim=1) + 1e-8)).item()


@pytest.mark.parametrize("name,steps,size", [("essay", 24, 28), ("equilibrium", 30, 28), ("cell", 12, 56)])
def test_mnist_models_step_as_pytorch(page, site, mnist_small, name, steps, size):
    model = site.models[name]
    x = torch.zeros(1, 1, size, size)
    x[..., :28, :28] = mnist_small[2][0]
    if size > 28:                                           # a second digit on the larger pad
        x[..., size - 28:, size - 28:] = torch.maximum(x[..., size - 28:, size - 28:], mnist_small[2][1])
    z0 = model.initial_state(x, torch.Generator().manual_seed(3))
    got = run_page(page, name, steps, x, z0)
    with torch.no_grad():
        traj = nca_rollout(model, x, steps, z0=z0).states[0]          # the library's NCA view: z_0 .. z_steps
        z = traj[-1:]
        assert rel_err(got["z"], z) <= TOL, rel_err(got["z"], z)
        ref_rel = [torch_rel(traj[t:t + 1], traj[t + 1:t + 2]) for t in range(steps)]
        np.testing.assert_allclose(got["rel"], ref_rel, rtol=1e-3)
        assert rel_err(got["logits"], model.readout(z)) <= TOL
        if name == "cell":
            d = _deqnca()
            cell = model.readout.local(z, 1)
            assert rel_err(got["cell"], cell) <= TOL
            assert rel_err(got["vote"], d.ink_vote(cell, d.ink_mask(x))) <= TOL
            assert rel_err(got["vote"], model.read(z, x)) <= TOL


@pytest.mark.parametrize("rule,conditioning,readout", [("residual_tanh", "additive", "global"),
                                                       ("contractive_tanh", "readonly", "cell")])
def test_any_equilibrium_model_a_checkpoint_may_hold_steps_as_pytorch(page, site, mnist_small, rule,
                                                                      conditioning, readout):
    # conditionings and read-outs no shipped model uses (a --cell-model checkpoint may), at random weights
    torch.manual_seed(0)
    model = type(site.models["essay"])(dict(rule=rule, conditioning=conditioning, readout=readout, readout_norm="batch",
                           input_channels=4, state_channels=8, hidden=16)).eval()
    with torch.no_grad():
        model.readout.norm.running_mean.uniform_(-0.5, 0.5)
        model.readout.norm.running_var.uniform_(0.5, 2.0)
    x = mnist_small[2][2:3]
    z0 = model.initial_state(x, torch.Generator().manual_seed(1))
    got = run_page(page, mnist_spec(model, "random"), 10, x, z0)
    with torch.no_grad():
        z = nca_rollout(model, x, 10, z0=z0).states[0, -1:]
        assert rel_err(got["z"], z) <= TOL, rel_err(got["z"], z)
        assert rel_err(got["logits"], model.readout(z)) <= TOL
        if readout == "cell":
            assert rel_err(got["cell"], model.readout.local(z, 1)) <= TOL


@pytest.mark.parametrize("name", ["lizard-bptt", "lizard-equilibrium"])
def test_growing_nca_steps_as_pytorch(page, site, name):
    rule = site.models[name].rule
    H, W = site.models[name].target.shape[1:]
    steps, seed = 60, 7
    # the masks PyTorch's stochastic step draws from a generator seeded `seed`, one (1, 1, H, W) draw per step
    gen = torch.Generator().manual_seed(seed)
    fire = torch.cat([(torch.rand(1, 1, H, W, generator=gen) < rule.config.fire_rate).flatten()
                      for _ in range(steps)]).to(torch.uint8)
    got = run_page(page, name, steps, fire=fire)            # z0 = None: the page's seed cell
    with torch.no_grad():
        f = rule.stochastic_map(torch.Generator().manual_seed(seed))
        z = rule.seed(1, H, W)
        for _ in range(steps):
            z = f(z)
        assert (z[:, 3] > 0.1).sum() > 100                  # it grew
        assert rel_err(got["z"], z) <= TOL, rel_err(got["z"], z)
        # the expected map, from the grown state with a square cut out (erased cells are zeros)
        z0 = z.clone()
        z0[..., H // 2 - 8:H // 2 + 8, W // 2 - 8:W // 2 + 8] = 0
        got = run_page(page, name, 20, z0=z0)
        z = z0
        for _ in range(20):
            z = rule.step(z, stochastic=False)
        assert rel_err(got["z"], z) <= TOL, rel_err(got["z"], z)


def test_page_mazes_are_perfect_mazes_encoded_as_the_library_does(page):
    d = _deqnca()
    for size, seed in ((9, 1), (13, 2), (33, 3)):
        got = page.evaluate("([s, r]) => deqncaTest.maze(s, r)", [size, seed])
        side = got["side"]
        layout = np.asarray(got["layout"], dtype=np.uint8).reshape(side, side)
        assert side == d.mazes.layout_side(size) and d.maze_analysis.is_perfect(layout)
        assert (d.maze_analysis.bfs_path(layout) == ((layout & d.mazes.ON_PATH) > 0)).all()
        x, _ = d.mazes.to_images(layout[None])
        assert np.array_equal(browser.unb64(got["x"]), x.flatten().numpy())


@pytest.mark.parametrize("name", ["maze-dt", "maze-deq-res"])
def test_maze_solvers_step_as_pytorch(page, site, name):
    d = _deqnca()
    model = site.models[name]
    got = page.evaluate("([s, r]) => deqncaTest.maze(s, r)", [13, 5])
    layout = np.asarray(got["layout"], dtype=np.uint8).reshape(got["side"], -1)
    x, path = d.mazes.to_images(layout[None])
    out = run_page(page, name, 40, x)                        # z0 = None: the model's test-time start
    with torch.no_grad():
        f, z = model.step_map(x), model.inference_state(x)
        for _ in range(40):
            z = f(z)
        assert rel_err(out["z"], z) <= TOL, rel_err(out["z"], z)
        pred = (model.head(z).argmax(1) == 1) & (x.amax(1) > 0)
        assert np.array_equal(browser.unb64(out["path"], np.uint8), pred.flatten().numpy())
        if name == "maze-dt":
            assert pred.equal(path.bool())                   # DT-recall solves a 13x13 maze in 40 steps


# ---- the max-plus equilibrium solvers (geodesic, trace): their states are PyTorch's bit for bit ----------------

def count_shortest_paths(layout):
    """(length, number of shortest start-to-goal paths, counted up to 2) through the open layout pixels."""
    d = _deqnca()
    kind = layout & d.mazes.KIND_MASK
    start, goal = (tuple(np.argwhere(kind == k)[0]) for k in (d.mazes.START, d.mazes.GOAL))
    dist, count, todo = {start: 0}, {start: 1}, [start]
    for p in todo:                                          # breadth first: todo grows as it is read
        for q in ((p[0] + 1, p[1]), (p[0] - 1, p[1]), (p[0], p[1] + 1), (p[0], p[1] - 1)):
            if kind[q] == d.mazes.WALL:
                continue
            if q not in dist:
                dist[q], count[q] = dist[p] + 1, 0
                todo.append(q)
            if dist[q] == dist[p] + 1:
                count[q] = min(2, count[q] + count[p])
    return dist[goal], count[goal]


def page_maze(page, size, seed, loops=0.0):
    """(layout, image x, path mask) of the page's maze for `size`, `seed`, `loops`."""
    d = _deqnca()
    got = page.evaluate("([s, r, l]) => deqncaTest.maze(s, r, l)", [size, seed, loops])
    layout = np.asarray(got["layout"], dtype=np.uint8).reshape(got["side"], -1)
    x, path = d.mazes.to_images(layout[None])
    assert np.array_equal(browser.unb64(got["x"]), x.flatten().numpy())
    return layout, x, path


@pytest.mark.parametrize("size,seed,loops", [(13, 4, 0.1), (33, 5, 0.05), (59, 6, 0.01), (59, 7, 0.1)])
def test_page_mazes_with_loops_have_one_shortest_path_and_mark_it(page, size, seed, loops):
    d = _deqnca()
    layout, _, _ = page_maze(page, size, seed, loops)
    n = (size + 1) // 2
    perfect = 2 * n * n - 1                                 # open pixels of a perfect maze: n² cells, n² − 1 passages
    assert not d.maze_analysis.is_perfect(layout)
    assert ((layout & d.mazes.KIND_MASK) != d.mazes.WALL).sum() == perfect + round(loops * n * n)
    assert not (layout[::2, ::2] & d.mazes.KIND_MASK).any()        # the wall posts stay
    length, paths = count_shortest_paths(layout)
    marked = (layout & d.mazes.ON_PATH) > 0
    assert paths == 1 and marked.sum() == length + 1
    assert (d.maze_analysis.bfs_path(layout) == marked).all()


def torch_fixed_point(model, x):
    """(z*, N): PyTorch's fixed point from the test-time start and the steps N after which the state is it."""
    f, z = model.step_map(x), model.inference_state(x)
    for n in range(model.rule.steps_bound(*z.shape[2:])):
        fz = f(z)
        if torch.equal(fz, z):
            return z, n
        z = fz
    raise AssertionError("no fixed point within the rule's bound")


def check_answer(out, model, z, x):
    """The page's logits are the head's at z within float32 round-off, and its path mask is PyTorch's (a pixel whose
    two logits tie within that round-off may go either way)."""
    d = _deqnca()
    logits = model.head(z)
    assert rel_err(out["logits"], logits) <= TOL, rel_err(out["logits"], logits)
    pred = d.maze_model.predict(logits, x)[0]
    got = torch.from_numpy(browser.unb64(out["path"], np.uint8).copy()).view(pred.shape).bool()
    tie = (logits[0, 1] - logits[0, 0]).abs() <= 1e-5 * logits.abs().max()
    assert torch.equal(got | tie, pred | tie) and (got != pred).sum() <= 2
    return pred


@pytest.mark.parametrize("name,size,loops", [("maze-geodesic", 9, 0), ("maze-geodesic", 33, 0),
                                             ("maze-trace", 9, 0.1), ("maze-trace", 33, 0.05)])
def test_max_plus_solvers_are_pytorch_bit_for_bit(page, site, one_thread, name, size, loops):
    model = site.models[name]
    layout, x, path = page_maze(page, size, 11, loops)
    with torch.no_grad():
        zf, n = torch_fixed_point(model, x)
        f, z = model.step_map(x), model.inference_state(x)
        for _ in range(n // 2):
            z = f(z)
        out = run_page(page, name, n // 2, x)                # z0 = None: zeros, the test-time start
        assert torch.equal(torch.from_numpy(browser.unb64(out["z"]).copy()).view(z.shape), z)
        assert min(out["rel"]) > 0
        out = run_page(page, name, model.rule.steps_bound(*zf.shape[2:]), x, until_fixed=True)
        assert out["fixedAt"] == n and out["rel"][-1] == 0 and min(out["rel"][:-1]) > 0
        assert torch.equal(torch.from_numpy(browser.unb64(out["z"]).copy()).view(zf.shape), zf)
        pred = check_answer(out, model, zf, x)
        if name == "maze-trace":                             # the hand-set trace marks the shortest path
            assert torch.equal(zf[0, 4] > 0, torch.from_numpy((layout & 4) > 0))
        else:                                               # the shipped geodesic model solves perfect mazes
            assert torch.equal(pred, path[0].bool())


@pytest.mark.parametrize("form", ["geodesic", "trace"])
def test_emitters_and_Z_are_rounded_as_pytorch_rounds_them(page, form, one_thread):
    # a cost_max that makes Z = cost_max·H·W inexact in float32, random weights (emitters of several colours, costs
    # that differ per colour): the page's emitters s = Z·((a > 0) + soft − soft) (trace: Z·(a > 0) + soft − soft)
    # are torch's float32 results (the geodesic's differ from Z by an ulp for some colours: seed 4), and its states
    # PyTorch's bit for bit
    d = _deqnca()
    torch.manual_seed(4)
    cfg = d.maze_presets.build(form).model
    cfg.update(width=3, rule_kw={"cost_min": 0.6, "cost_max": 1.7}, readout_symmetry="d4")
    model = d.maze_model.MazeSolverNet(cfg).eval()
    spec = maze_spec(model, "random")
    layout, x, _ = page_maze(page, 11, 2, 0.05)             # 28 x 28 pixels, 13 x 13 cells: Z = 1.7 · 784, 1.7 · 169
    with torch.no_grad():
        u = model.grid_input(x)
        s, _, open_ = model.rule.fields(u)
        top = model.rule.ceiling(u)
        assert float(np.float32(top)) != top                 # Z is rounded
        colour = torch.from_numpy(d.mazes.PALETTE)[None, :, :, None, None].eq(u[:, None]).all(2).float().argmax(1)[0]
        t = spec["tensors"]
        bit, soft = (browser.unb64(t[k]["data"]).reshape(4, -1)[colour.numpy()] for k in ("bit", "soft"))
        want = emitters(form, bit, soft, open_[0].permute(1, 2, 0).numpy(), top)
        assert np.array_equal(want, s[0].permute(1, 2, 0).numpy())
        assert (s > 0).any()
        if form == "geodesic":
            assert not np.isin(s[s > 0].numpy(), [np.float32(top)]).all()                   # s is not just Z
        zf, n = torch_fixed_point(model, x)
        out = run_page(page, spec, n + 1, x, until_fixed=True)
        assert out["Z"] == float(np.float32(top)) and out["fixedAt"] == n
        assert torch.equal(torch.from_numpy(browser.unb64(out["z"]).copy()).view(zf.shape), zf)
        check_answer(out, model, zf, x)


def test_the_panel_solves_a_59_maze_with_the_trace_model_as_pytorch_at_60_steps_per_second(page, site, one_thread):
    # the acceptance check: the live panel, driven through its controls, solves a 59x59 maze (with loops) with the
    # trace model to its fixed point, equal to PyTorch's answer, at >= 60 steps/s; beside DT-recall at 33x33
    d = _deqnca()
    page.evaluate("deqncaTest.pauseAll()")
    page.locator("#maze").scroll_into_view_if_needed()     # panels out of view do not compute
    page.select_option("#maze-model", "maze-trace")
    page.select_option("#maze-loops", "0.05")
    page.select_option("#maze-size", "59")                 # a new maze, playing at "max"
    page.wait_for_function("document.getElementById('maze-status').dataset.phase === 'done'", timeout=120_000)
    got = page.evaluate("deqncaTest.mazePanel()")
    assert got["model"] == "maze-trace" and got["side"] == 61 and got["residual"] == 0
    assert _text(page, "#maze-controls .rate") == "done: at the fixed point"
    layout = np.asarray(got["layout"], dtype=np.uint8).reshape(got["side"], -1)
    x, path = d.mazes.to_images(layout[None])
    model = site.models["maze-trace"]
    with torch.no_grad():
        zf, n = torch_fixed_point(model, x)
        assert got["fixedAt"] == n and got["steps"] == n + 1
        assert torch.equal(torch.from_numpy(browser.unb64(got["z"]).copy()).view(zf.shape), zf)
        marked = torch.from_numpy((layout & d.mazes.ON_PATH) > 0)
        assert torch.equal(zf[0, 4] > 0, marked) and count_shortest_paths(layout)[1] == 1      # the BFS path
        page_path = torch.from_numpy(browser.unb64(got["path"], np.uint8).copy()).view(x.shape[-2:]).bool()
        assert torch.equal(page_path, d.maze_model.predict(model.head(zf), x)[0])             # PyTorch's answer
    panel = got["steps"] / (got["playedMs"] / 1000)
    trace = page.evaluate("deqncaTest.bench('maze-trace', {size: 59, loops: 0.05, untilFixed: true})")
    dt = page.evaluate("deqncaTest.bench('maze-dt', {size: 33, steps: 3})")
    print(f"\nsteps/s: trace 59x59 in the panel {panel:.0f} ({got['steps']} steps), trace 59x59 model alone "
          f"{trace:.0f}, DT-recall 33x33 model alone {dt:.1f}")
    assert panel >= 60, panel


def test_the_export_leaves_out_a_trace_model_the_folder_lacks(tmp_path, monkeypatch):
    import deqnca.web.export as export

    monkeypatch.setattr(export, "MNIST_MODELS", {})
    monkeypatch.setattr(export, "GROW_MODELS", {})
    monkeypatch.setattr(export, "MAZE_MODELS", {"maze-dt": "maze/dt", "maze-trace": "maze/trace"})
    loaded = _load_models(models_folder(tmp_path, trace=False), None, examples=False)
    assert list(loaded["maze"]) == ["maze-dt"]
    assert set(build_bundle(loaded)["models"]) == {"maze-dt"}


def _strokes_of_a_seven(box):
    """Mouse positions (page pixels) of a hand-drawn 7: a top bar, then a slanted down stroke."""
    def at(cx, cy):                                         # pad cells (0..28) to page pixels
        return box["x"] + cx / 28 * box["width"], box["y"] + cy / 28 * box["height"]
    bar = [at(7 + t, 7 + 0.1 * t) for t in np.linspace(0, 14, 15)]
    down = [at(21 - 0.45 * t, 8 + t) for t in np.linspace(0, 14, 15)]
    return [bar + down]


def test_a_digit_drawn_with_the_mouse_gets_pytorchs_class(page, site):
    d = _deqnca()
    page.evaluate("deqncaTest.pauseAll()")
    page.click("#pad-clear")
    box = page.locator("#pad").bounding_box()
    for stroke in _strokes_of_a_seven(box):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for p in stroke[1:]:
            page.mouse.move(*p, steps=2)
        page.mouse.up()
    page.evaluate("deqncaTest.pauseAll()")
    steps = page.evaluate("deqncaTest.panelSteps('duel', 16)")
    duel = page.evaluate("deqncaTest.duel()")
    x = torch.tensor(duel["x"], dtype=torch.float32).view(1, 1, 28, 28)
    assert steps == duel["steps"] == 16 and x.sum() > 20    # ink was drawn
    # the canvas shows the pixels the models read
    shown = page.evaluate("""() => { const c = document.getElementById('pad');
        const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return Array.from(rgba.filter((_, i) => i % 4 === 0)); }""")
    np.testing.assert_allclose(np.asarray(shown) / 255, x.flatten().numpy(), atol=0.5 / 255 + 1e-6)
    z0 = torch.tensor(duel["z0"], dtype=torch.float32).view(28, 28, 32).permute(2, 0, 1)[None]
    with torch.no_grad():
        for name in ("essay", "equilibrium"):
            model = site.models[name]
            z = nca_rollout(model, x, 16, z0=z0).states[0, -1:]
            assert duel["answers"][name] == model.readout(z).argmax().item(), name
        assert duel["answers"]["essay"] == 7                 # and it reads as a 7
        cells = page.evaluate("deqncaTest.cells()")
        model = site.models["cell"]
        # the per-cell panel's state came from its own noise: compare its vote with PyTorch from that state
        assert cells["N"] == 28 and cells["x"] == duel["x"]
        vote = torch.tensor(cells["vote"])
        z = torch.from_numpy(browser.unb64(cells["z"]).copy()).view(28, 28, -1).permute(2, 0, 1)[None]
        ref = d.ink_vote(model.readout.local(z, 1), d.ink_mask(x))[0]
        assert rel_err(vote, ref) <= TOL and vote.argmax() == ref.argmax()


def test_the_page_is_fast_enough(page):
    # >= 30 steps/s on 2 idle cores (docs/web.md); 10 leaves room for a loaded machine
    essay = page.evaluate("deqncaTest.bench('essay', {steps: 30})")
    lizard = page.evaluate("deqncaTest.bench('lizard-equilibrium', {steps: 30, warmup: 100})")  # a grown lizard
    assert essay >= 10 and lizard >= 10, (essay, lizard)


def test_without_a_per_cell_model_the_panel_says_so(chromium, tmp_path):
    index = write_site(tmp_path / "site", cell_checkpoint=False, examples=False)
    assert not (tmp_path / "site" / "weights.js").read_text().count('"cell"')
    with browser.open_page(chromium, index) as (pg, log):
        assert pg.locator("#cell-missing").is_visible()
        assert "cell" not in pg.evaluate("deqncaTest.models()")
        assert math.isfinite(pg.evaluate("deqncaTest.bench('panel:duel', {steps: 2})"))   # the pad still feeds the duel
    assert not log, log


def test_a_fresh_page_starts_on_the_equilibrium_lizard_with_legends(chromium, site):
    with browser.open_page(chromium, site.index) as (pg, log):
        pg.evaluate("deqncaTest.pauseAll()")
        # the page is about equilibria: the lizard panel starts on the rule trained as one
        assert pg.eval_on_selector("#grow-model", "s => s.value") == "lizard-equilibrium"
        assert pg.eval_on_selector("#grow-model", "s => s.options[0].value") == "lizard-equilibrium"
        # the ten classes' colours are named beside the probability lines and the per-cell labels
        keys = pg.eval_on_selector_all("#duel .legend .key", "ks => ks.map(k => k.textContent)")
        assert keys == [str(k) for k in range(10)] * 2
        assert pg.eval_on_selector_all("#cell-legend .key", "ks => ks.length") == 10
        colours = pg.eval_on_selector_all("#duel .legend .key i",
                                          "ks => ks.map(k => getComputedStyle(k).backgroundColor)")
        assert len(set(colours[:10])) == 10
        # every panel has a speed readout
        assert pg.eval_on_selector_all(".controls .rate", "rs => rs.length") == 4
        # the maze panel starts on the trace equilibrium solver, as fast as it goes; the recall models run to 33x33
        assert pg.eval_on_selector("#maze-model", "s => s.value") == "maze-trace"
        labels = pg.eval_on_selector_all("#maze-model option", "os => os.map(o => o.textContent)")
        assert {"geodesic equilibrium", "trace equilibrium (loops)", "DT-recall"} <= set(labels)
        assert pg.eval_on_selector("#maze-controls select", "s => s.value") == "Infinity"
        sizes = pg.eval_on_selector_all("#maze-size option", "os => os.map(o => o.value)")
        assert sizes == ["9", "13", "19", "33", "59", "101", "201"]
        pg.select_option("#maze-size", "101")
        pg.select_option("#maze-model", "maze-dt")
        assert pg.eval_on_selector("#maze-size", "s => s.value") == "33"
        disabled = pg.eval_on_selector_all("#maze-size option:disabled", "os => os.map(o => o.value)")
        assert disabled == ["59", "101", "201"]
        assert pg.eval_on_selector("#maze-controls select", "s => s.value") == "30"
        pg.select_option("#maze-model", "maze-geodesic")
        assert not pg.eval_on_selector_all("#maze-size option:disabled", "os => os.length")
        pg.evaluate("deqncaTest.pauseAll()")
    assert not log, log


def _text(pg, selector):
    return pg.eval_on_selector(selector, "e => e.textContent")


def test_a_playing_panel_reports_its_steps_per_second(page):
    page.evaluate("deqncaTest.pauseAll()")
    page.locator("#duel").scroll_into_view_if_needed()      # panels out of view do not compute
    page.select_option("#duel-controls select", "30")
    page.click("#duel-controls button:text-is('reset')")
    page.click("#duel-controls button.play")
    assert _text(page, "#duel-controls button.play") == "pause"
    rate = r"/^[0-9.]+ steps\/s$/"
    page.wait_for_function(f"{rate}.test(document.querySelector('#duel-controls .rate').textContent)", timeout=10_000)
    at, count = page.eval_on_selector("#duel-controls .rate", "e => e.dataset.at"), _text(page, "#duel-controls .count")
    # measured again as it plays (over the last second), while the step counter moves on
    page.wait_for_function("([at, c]) => document.querySelector('#duel-controls .rate').dataset.at !== at && "
                           "document.querySelector('#duel-controls .count').textContent !== c", arg=[at, count],
                           timeout=10_000)
    page.wait_for_function(f"{rate}.test(document.querySelector('#duel-controls .rate').textContent)", timeout=10_000)
    measured = float(_text(page, "#duel-controls .rate").split()[0])
    assert 0 < measured <= 45, measured                    # it aims at the 30 steps/s chosen
    page.evaluate("deqncaTest.pauseAll()")
    assert _text(page, "#duel-controls .rate") == "paused"


def test_a_panel_with_a_step_budget_offers_replay_when_it_is_spent(page):
    # the per-cell model of this site was trained through 4 rollout steps: the panel stops there
    page.evaluate("deqncaTest.pauseAll()")
    page.locator("#draw").scroll_into_view_if_needed()
    page.click("#cell-controls button:text-is('reset')")
    page.click("#cell-controls button.play")
    page.wait_for_function("document.querySelector('#cell-controls button.play').textContent !== 'pause'",
                           timeout=10_000)
    assert _text(page, "#cell-controls button.play") == "replay"       # never a "play" that does nothing
    assert _text(page, "#cell-controls .count") == "step 4"
    assert _text(page, "#cell-controls .rate").startswith("done")
    page.click("#cell-controls button.play")                         # replay: from noise again, and on
    page.wait_for_function("document.querySelector('#cell-controls button.play').textContent === 'replay'",
                           timeout=10_000)
    assert _text(page, "#cell-controls .count") == "step 4"
    page.click("#cell-controls button:text-is('reset')")
    assert _text(page, "#cell-controls button.play") == "play" and _text(page, "#cell-controls .count") == "step 0"
    page.evaluate("deqncaTest.pauseAll()")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]


def page_refs(index) -> list[str]:
    """Every href= and src= of the written page."""
    parser = _Refs()
    parser.feed(Path(index).read_text())
    return parser.refs


@pytest.mark.parametrize("installed", [False, True], ids=["checkout", "wheel"])
def test_every_link_of_the_page_resolves(tmp_path, monkeypatch, installed):
    # from a wheel there is no README or docs/ beside the package: no link may lead out of the written folder
    import deqnca.web.export as export

    if installed:
        monkeypatch.setattr(export, "repo_root", lambda: None)
    out = tmp_path / "deep" / "site"
    index = write_bundle(out, {"version": 1, "models": {}})
    refs = page_refs(index)
    assert "weights.js" in refs and any(r.startswith("https://") for r in refs)
    for ref in refs:
        if ref.startswith("https://"):
            continue
        assert "://" not in ref and not ref.startswith(("/", "#")), ref
        target = (out / ref.split("#")[0]).resolve()
        assert target.is_file(), ref
        if installed:
            assert target.is_relative_to(out.resolve()), ref
    html = index.read_text()
    assert "@REPO@" not in html
    if installed:                                          # the docs named, as text, with where they live
        assert 'title="docs/nca.md in the deqnca source repository' in html and "../" not in html


def test_web_subcommand_writes_a_page_that_links_to_the_docs(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="deqnca")
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["web", "--out", str(tmp_path / "site"), "--no-examples"])
    assert args.func(args) == 0 and "index.html" in capsys.readouterr().out
    html = (tmp_path / "site" / "index.html").read_text()
    assert "@REPO@" not in html
    docs = [h.split('"')[0] for h in html.split('href="')[1:] if "docs/" in h]
    assert docs and all((tmp_path / "site" / d).resolve().exists() for d in docs), docs
    written = {p.name for p in (tmp_path / "site").iterdir()}
    assert {"app.js", "models.js", "mazes.js", "style.css", "weights.js"} <= written
