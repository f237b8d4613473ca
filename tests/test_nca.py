"""The NCA view: rollouts record what they claim, the contractive rule converges from noise, crops
have the requested size, and the demo writes a report whose every referenced file exists."""
from pathlib import Path

import pytest
import torch

from deqnca.cli import main
from deqnca.core.nca import ANCHORS, crop, rollout, rollout_curve
from deqnca.core.resources import models_dir
from deqnca.tasks.mnist.model import EquilibriumModel
from deqnca.viz.report import referenced_files

ROOT = Path(__file__).resolve().parents[1]


def test_rollout_records_states_residuals_and_probs():
    torch.manual_seed(0)
    m = EquilibriumModel(dict(solver="rollout", gradient="bptt", solver_kw={"max_iter": 5}))
    x = torch.rand(3, 1, 10, 12)
    r = rollout(m, x, steps=5, generator=torch.Generator().manual_seed(0))
    assert r.states.shape == (3, 6, 32, 10, 12) and r.rel_residual.shape == (3, 5) and r.probs.shape == (3, 6, 10)
    d = (r.states[:, 3] - r.states[:, 2]).flatten(1).norm(dim=1)
    assert torch.allclose(r.abs_residual[:, 2], d, rtol=1e-5)
    assert torch.allclose(r.probs.sum(-1), torch.ones(3, 6))
    # the rollout's last state is what the model's own rollout solver returns from the same noise
    z, _ = m.solve(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, r.states[:, -1], atol=1e-5)


def test_contractive_rule_converges_from_noise_at_any_size():
    torch.manual_seed(0)
    m = EquilibriumModel(dict(rule="contractive_tanh", rule_kw={"gamma": 0.8}, solver="anderson",
                              gradient="implicit"))
    for size in (8, 28, 61):
        r = rollout(m, torch.rand(2, 1, size, size), steps=60, keep_states=False)
        assert r.rel_residual[:, -1].max() < 1e-3, size
        # the contraction factor bounds the residual's decay step over step
        # (checked while the residual is well above float32 round-off)
        a = r.abs_residual
        ratio = a[:, 1:] / a[:, :-1]
        above_roundoff = a[:, :-1] > 1e-4 * a[:, :1]
        assert ratio[above_roundoff].max() <= 0.8 * 1.02


def test_rollout_curve_shapes():
    m = EquilibriumModel(dict(solver="rollout", gradient="bptt", solver_kw={"max_iter": 3}))
    c = rollout_curve(m, torch.rand(7, 1, 8, 8), torch.randint(0, 10, (7,)), steps=4, batch_size=3)
    assert len(c["accuracy"]) == 5 and len(c["rel_median"]) == 4 and c["n"] == 7


@pytest.mark.parametrize("anchor", ANCHORS)
def test_crop_sizes(anchor):
    x = torch.arange(28 * 28.0).view(1, 1, 28, 28)
    assert crop(x, 1.0, anchor).shape[-2:] == (28, 28)
    assert crop(x, 0.25, anchor).shape[-2:] == (14, 14)
    if anchor == "top-left":
        assert crop(x, 0.25, anchor)[0, 0, 0, 0] == 0
    if anchor == "bottom-right":
        assert crop(x, 0.25, anchor)[0, 0, -1, -1] == 28 * 28 - 1


def test_demo_quick_writes_report_with_existing_files(tmp_path, capsys):
    assert main(["demo", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    html = tmp_path / "index.html"
    files = referenced_files(html)
    assert len(files) >= 8 and all(f.exists() and f.stat().st_size > 0 for f in files)
    names = {f.name for f in files}
    assert {"fig1-essay.gif", "fig1-essay-frames.png", "fig1-essay-curves.png", "fig2-crops.png"} <= names
    out = capsys.readouterr().out
    assert "parameters 15402" in out and "test accuracy" in out
    page = html.read_text()
    # models by name, never by the folder deqnca is installed in or any other absolute path
    assert str(models_dir()) not in page and str(tmp_path) not in page and "/src/deqnca" not in page
    assert "<td>mnist-essay</td>" in page and "<td>mnist-equilibrium</td>" in page
    # the heading names the images the numbers come from (--quick: the first 500), not the whole test set
    assert "Shipped models on the first 500 of the 10,000 MNIST test images" in page
    assert "on the 10,000 MNIST test images" not in page
    # the self-classifying text names the models its figures and table name
    cells = page[page.index("<h2>Self-classifying digits</h2>"):].split("</section>")[0]
    assert "<i>consensus</i>" in cells and "<i>equilibrium</i>" not in cells
    assert "panorama-labels.png" in names


def test_report_names_shipped_models_and_the_sample(tmp_path):
    from deqnca.reports.report import _eval_section, display_name

    root = models_dir()
    assert display_name(root / "mnist-essay") == "mnist-essay"
    assert display_name(f"{root / 'mnist-cell'}  [draft]") == "mnist-cell"
    assert display_name("/home/someone/runs/a/last") == "a/last" and display_name("runs/a/last") == "runs/a/last"
    row = {"checkpoint": str(root / "mnist-essay"), "accuracy": 0.98, "accuracy_ci95": [0.97, 0.99], "n": 2000,
           "of": 10000, "subset": "evenly spaced", "parameters": 15402, "solver": "rollout", "nstep_mean": 16.0,
           "rel_median": 0.07, "rel_p99": 0.08, "frac_below_1e-3": 0.0}
    sec = _eval_section([row], root)
    assert sec["title"] == "Shipped models on 2,000 of the 10,000 MNIST test images (evenly spaced)"
    assert sec["tables"][0]["rows"][0][:4] == ["mnist-essay", "98.00%", "97.0–99.0", "15,402"]
    mixed = _eval_section([row, {**row, "n": 500, "subset": "first"}], root)
    assert "images column" in mixed["title"] and mixed["tables"][0]["rows"][1][3] == "500"
    full = _eval_section([{**row, "n": 10000, "subset": "all"}], root)
    assert full["title"] == "Shipped models on all 10,000 MNIST test images" and "95% CI" not in \
        full["tables"][0]["header"]


def test_panorama_label_maps_outline_the_ink_and_name_the_true_labels(tmp_path):
    import matplotlib.pyplot as plt

    from deqnca.reports.report import _panorama_axes, panorama_figure
    from deqnca.tasks.mnist.panoramas import Panorama

    canvas = torch.zeros(1, 84, 84)
    canvas[0, 10:30, 12:16] = 1.0                            # one stroke: a "1" in the box at (5, 5)
    pan = Panorama(canvas, [(1, 5, 5, 0)])
    logits = torch.zeros(10, 84, 84)
    logits[7] = 1.0                                          # the model says 7 everywhere
    maps = [("m", logits.argmax(0).numpy(), logits)]
    fig = _panorama_axes(pan, maps, 0.3)
    try:
        canvas_ax, map_ax = fig.axes[:2]
        assert [t.get_text() for t in canvas_ax.texts] == ["true 1"]
        assert [t.get_text() for t in map_ax.texts] == ["true 1, says 7"]
        # the ink's outline: contour lines drawn over the label map, around the stroke
        lines = [p for c in map_ax.collections for p in c.get_paths() if len(p.vertices)]
        assert lines and all(9 <= v[1] <= 31 and 11 <= v[0] <= 17 for p in lines for v in p.vertices)
        assert "0 of 1 right" in map_ax.get_title()
    finally:
        plt.close(fig)
    assert panorama_figure(pan, maps, tmp_path / "p.png").stat().st_size > 0


def test_rollout_command(tmp_path, capsys):
    assert main(["rollout", "--device", "cpu", "--index", "3", "--steps", "8", "--out", str(tmp_path),
                 "--json"]) == 0
    assert (tmp_path / "mnist-essay-3.gif").exists()
    assert main(["rollout", "--device", "cpu", "--index", "99999", "--out", str(tmp_path)]) == 2     # a usage error
