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
    mnist_spec,
    write_bundle,
    write_site,
)

TOL = 1e-4      # relative error, float32 (the page stores float32 and accumulates in float64)


def _deqnca():
    """The deqnca modules these tests use besides the exporter, in one place."""
    from deqnca.core.readout import ink_mask, ink_vote
    from deqnca.tasks.maze import analysis as maze_analysis
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.mnist.task import MnistConfig as TrainConfig
    from deqnca.tasks.mnist.task import train
    return types.SimpleNamespace(mazes=mazes, maze_analysis=maze_analysis, ink_mask=ink_mask, ink_vote=ink_vote,
                                 TrainConfig=TrainConfig, train=train)


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


@pytest.fixture(scope="module")
def site(tmp_path_factory, mnist_small):
    root = tmp_path_factory.mktemp("web")
    cell = _train_tiny_cell_model(root / "cell", mnist_small)
    models = _load_models(default_models_dir(), cell)        # what write_site does, loading once
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


def run_page(page, name, steps, x=None, z0=None, fire=None):
    """The page's state after `steps` from input x and state z0 (None: the model's own start)."""
    args = {"steps": steps, "x": None if x is None else browser.b64(x),
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
    assert {"app.js", "models.js", "style.css", "weights.js"} <= {p.name for p in (tmp_path / "site").iterdir()}
