"""The self-classifying digits' figures: valid files, label maps in the right colours, the report section's
table equal to `cells.evaluate`, the report without the section when no cells models are shipped, and
`deqnca cells figures`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from deqnca.tasks.cells import figures as cells_view
from deqnca.tasks.cells import pictures, rollouts
from deqnca.tasks.cells.model import CellsModel, evaluate, mutation_test, resize_digits, summarise, truth_map
from deqnca.tasks.cells.rollouts import BACKGROUND, PALETTE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def test_digits():
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="test")
    return x[:400].clone(), y[:400].clone()


def _article(seed=0):
    """The article's rule with a non-zero output layer, so that the labels move."""
    torch.manual_seed(seed)
    model = CellsModel({"rule": "selfclass", "rule_kw": {"perception": 16, "hidden": 16}})
    with torch.no_grad():
        model.rule.w2.weight.normal_(std=0.05)
        model.rule.w2.bias.normal_(std=0.05)
    return model.eval()


def _equilibrium(seed=0, label=None):
    """The contraction; with `label`, a head that names that label in every cell."""
    torch.manual_seed(seed)
    model = CellsModel({"rule": "selfclass_contractive", "rule_kw": {"state_channels": 8, "embed": 4,
                                                                     "head_hidden": 8}}).eval()
    if label is not None:
        with torch.no_grad():
            model.rule.head[-1].weight.zero_()
            model.rule.head[-1].bias.zero_()
            model.rule.head[-1].bias[label] = 5.0
    return model


def _meta(size):
    return {"train_config": {"size": size}}


def test_log_steps_and_label_colours():
    assert rollouts.log_steps(200) == [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200]
    assert rollouts.log_steps(1000)[-3:] == [500, 700, 1000] and rollouts.log_steps(250)[-1] == 250
    rgb = rollouts.label_colours(np.array([[-1, 0, 9]]))
    assert rgb[0, 0].tolist() == list(BACKGROUND) and rgb[0, 1].tolist() == PALETTE[0].tolist()
    assert rgb[0, 2].tolist() == [23, 190, 207]              # tab10's cyan
    import matplotlib

    tab10 = np.round(np.array(matplotlib.colormaps["tab10"].colors) * 255).astype(int)
    assert np.array_equal(tab10, PALETTE.astype(int))


def test_the_gif_paints_dead_cells_white_and_alive_cells_in_their_labels_colour(tmp_path, test_digits):
    x, y = resize_digits(test_digits[0][:3], 14), test_digits[1][:3]
    model = _equilibrium(label=3)                 # every alive cell says 3
    maps = rollouts.label_map(model, x, model.rollout(x, 2))
    alive = x[:, 0] > 0.1
    assert torch.equal(maps == 3, alive) and torch.equal(maps == -1, ~alive)
    gif, png = pictures.label_map_gif(model, x, y, tmp_path / "labels.gif", steps=[1, 2, 3, 5])
    im = Image.open(gif)
    assert im.format == "GIF" and im.n_frames == 4
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(gif))]
    scale, head = 4, 20                          # write_label_gif's defaults: 4× tiles under a 20-pixel header
    for k in range(3):
        left = k * (14 * scale + 2 + scale) + 1
        tile = frames[-1][head + 1:head + 1 + 14 * scale, left:left + 14 * scale]
        want = np.where(np.repeat(np.repeat(alive[k].numpy(), scale, 0), scale, 1)[..., None],
                        PALETTE[3], np.array(BACKGROUND, dtype=np.uint8))
        assert np.array_equal(tile, want), k
    with Image.open(png) as strip:
        assert strip.format == "PNG" and strip.size[0] > 200


def test_every_figure_is_a_valid_file(tmp_path, test_digits, monkeypatch):
    xt, yt = test_digits
    x, y = resize_digits(xt[:8], 14), yt[:8]
    model = _article()
    r, maps = rollouts.rollout_report(model, x, truth_map(x, y), steps=12, marks=(5, 12), grab=(1, 12), keep=4)
    assert sorted(maps) == [1, 12] and maps[12].shape == (4, 14, 14)
    curves = cells_view.curves_figure({"article": r, "other": {**r, "curve_steps": None}}, tmp_path / "c.png")
    assert curves.with_suffix(".svg").is_file()
    rolls, roll = [], pictures._roll
    monkeypatch.setattr(pictures, "_roll", lambda *a, **k: rolls.append(roll(*a, **k)) or rolls[-1])
    mut = pictures.mutation_figure(model, x[:2], y[:2], x[2:4], y[2:4], tmp_path / "m.png", at=6, after=8,
                                     offsets=(1, 4, 8))
    drawn = [summarise(c)["accuracy"] for counts, *_ in rolls for c in counts.values()]
    m = mutation_test(model, x[:2], y[:2], x[2:4], y[2:4], at=6, after=8)
    assert drawn == m["before"]["curve"]["accuracy"] + m["after"]["curve"]["accuracy"]   # the same rollout
    canvas = pictures.canvas_figure(CellsModel({"rule": "selfclass_contractive"}).eval(), 1, tmp_path / "cv.png",
                                      steps=3, data=(xt, yt))
    for path in (curves, mut, canvas):
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_the_reports_numbers_are_the_evaluations(test_digits):
    xt, yt = test_digits
    x, y = resize_digits(xt[:20], 14), yt[:20]
    for model in (_article(), _equilibrium()):
        r, _ = rollouts.rollout_report(model, x, truth_map(x, y), steps=30, marks=(20, 30), batch_size=8)
        e = evaluate(model, x, truth_map(x, y), marks=(20, 30), batch_size=8)
        for m in (20, 30):
            assert r["at"][m]["accuracy"] == e["at"][m]["accuracy"]
            assert r["at"][m]["agreement"] == e["at"][m]["agreement"]
        assert r["curve"]["accuracy"] == [e["curve"]["accuracy"][t - 1] for t in r["curve_steps"]]


def test_the_section_table_is_evaluate_on_the_same_digits(tmp_path, test_digits):
    models = {"article": (_article(), _meta(14)), "equilibrium": (_equilibrium(), _meta(14))}
    logs = []
    sec = cells_view.section(models, tmp_path, n_digits=12, steps=80, n_mutation=2, data=test_digits,
                             log=logs.append)
    assert set(sec) == {"title", "text", "images", "tables"} and all((tmp_path / f).is_file() for f, _ in sec["images"])
    table = sec["tables"][0]
    assert "12 evenly spaced test digits" in table["caption"] and "docs/cells.md" in table["caption"]
    assert table["header"] == ["model", "cell accuracy at 20", "total agreement at 20", "cell accuracy at 80",
                               "total agreement at 80"]
    x, y = cells_view.even_digits(12, test_digits)
    x = resize_digits(x, 14)
    for row, (name, (model, _)) in zip(table["rows"], models.items()):
        e = evaluate(model, x, truth_map(x, y), marks=(20, 80))
        assert row == [name] + [f"{100 * e['at'][m][k]:.1f}%" for m in (20, 80) for k in ("accuracy", "agreement")]
    assert any("no canvases" in line for line in logs)      # 14×14 models: no 84×84 canvases of 28×28 digits


def test_the_report_leaves_the_section_out_without_cells_models(tmp_path, capsys):
    from deqnca.core.resources import shipped_cells_models, shipped_models
    from deqnca.reports.report import build

    assert shipped_cells_models(tmp_path / "nowhere") == {}
    page = build(shipped_models()[:1], tmp_path / "out", n_crops=2, n_curve=2, max_steps=1, fig_steps=1,
                 cells_models=shipped_cells_models(tmp_path / "nowhere"))
    assert "section left out" in capsys.readouterr().out
    html = page.read_text()
    assert "Local read-out on a panorama" in html and "Self-classifying" not in html


def test_the_report_has_the_section_after_the_panorama_given_cells_models(tmp_path):
    from deqnca.core.resources import shipped_models
    from deqnca.reports.report import build

    page = build(shipped_models()[:1], tmp_path, n_crops=2, n_curve=2, max_steps=1, fig_steps=1,
                 cells_models={"equilibrium": (_equilibrium(), _meta(14))}, cells_digits=8, cells_steps=20,
                 log=lambda s: None)
    html = page.read_text()
    assert html.index("Local read-out on a panorama") < html.index("Self-classifying digits") \
        < html.index("Test-time compute")
    assert "cells-labels-equilibrium.gif" in html and "8 evenly spaced test digits" in html


def test_cli_figures_from_a_checkpoint_and_an_eval_json(tmp_path, test_digits, capsys):
    from deqnca.cli import main
    from deqnca.engine.trainer import fit
    from deqnca.tasks.cells.task import CellsConfig, CellsTask

    xt, yt = test_digits
    cfg = CellsConfig(model="equilibrium", size=14, steps=1, batch_size=4, fresh=0, mutate=0, eval_every=0,
                      eval_images=4, eval_marks=[2], solver_iter=5, b_max_iter=5,
                      rule={"state_channels": 8, "embed": 4, "head_hidden": 8})
    fit(CellsTask(cfg, (xt[:16], yt[:16], xt[:4], yt[:4])), tmp_path / "run", progress=False)
    curve = {k: [0.1, 0.5, 0.9] for k in ("accuracy", "agreement")}
    (tmp_path / "e.json").write_text(json.dumps({"model": "article", "rows": [{"digits": 5, "curve": curve}]}))
    assert main(["cells", "figures", str(tmp_path / "run" / "last"), "--out", str(tmp_path / "fig"), "--digits", "8",
                 "--steps", "5", "--device", "cpu", "--eval-json", str(tmp_path / "e.json")]) == 0
    written = capsys.readouterr().out.split()
    names = {p.split("/")[-1] for p in written}
    assert {"cells-curves.png", "cells-labels-equilibrium.gif", "cells-labels-equilibrium-frames.png",
            "cells-mutation-equilibrium.png"} <= names
    assert Image.open(tmp_path / "fig" / "cells-labels-equilibrium.gif").n_frames == len(rollouts.log_steps(5))
    (tmp_path / "bad.json").write_text(json.dumps({"model": "x", "rows": [{"digits": 5}]}))
    assert main(["cells", "figures", str(tmp_path / "run" / "last"), "--out", str(tmp_path / "fig"),
                 "--device", "cpu", "--eval-json", str(tmp_path / "bad.json")]) != 0
    assert "--curves" in capsys.readouterr().err
