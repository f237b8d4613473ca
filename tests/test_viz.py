import html

import numpy as np
import pytest
import torch
from PIL import Image

from deqnca.viz.figures import default_steps, frame_strip, image_grid, line_plot, rollout_curves, save_gif
from deqnca.viz.project import Projection
from deqnca.viz.report import referenced_files, write_report


@pytest.fixture
def rollout():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(17, 32, 12, 12, generator=g) * 3
    rel = torch.logspace(0, -4, 16)
    probs = torch.softmax(torch.randn(17, 10, generator=g), dim=1)
    image = torch.rand(12, 12, generator=g)
    return states, rel, probs, image


def test_projection_shapes_and_dtype(rollout):
    states = rollout[0]
    proj = Projection.fit(states[-4:])
    rgb = proj.to_rgb(states[0])
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 12, 3)
    batch = proj.to_rgb_batch(states)
    assert batch.dtype == np.uint8 and batch.shape == (17, 12, 12, 3)
    np.testing.assert_array_equal(batch[3], proj.to_rgb(states[3]))
    # Extreme values clip rather than wrap.
    assert proj.to_rgb(states[0] * 1000).dtype == np.uint8


def test_projection_identical_cells_same_colour_across_frames(rollout):
    states = rollout[0].clone()
    proj = Projection.fit(states)
    states[5, :, 2, 3] = states[0, :, 7, 1]
    batch = proj.to_rgb_batch(states)
    np.testing.assert_array_equal(batch[5, 2, 3], batch[0, 7, 1])


def test_projection_few_channels():
    states = np.random.default_rng(0).normal(size=(3, 2, 6, 6))
    proj = Projection.fit(states)
    assert proj.components.shape == (3, 2)
    rgb = proj.to_rgb(states[0])
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    # The padded third component is constant, so the blue channel carries no information.
    assert len(np.unique(rgb[..., 2])) == 1
    with pytest.raises(ValueError):
        proj.to_rgb(np.zeros((5, 6, 6)))


def test_default_steps():
    s = default_steps(64)
    assert s[0] == 0 and s[-1] == 64 and len(s) >= 8 and s == sorted(set(s))
    assert default_steps(3) == [0, 1, 2, 3]


def test_figures_written(tmp_path, rollout):
    states, rel, probs, image = rollout
    proj = Projection.fit(states[-1:])
    paths = [
        frame_strip(states, proj, tmp_path / "a" / "strip.png", image=image, title="digit"),
        frame_strip(states, proj, tmp_path / "strip2.png", steps=[0, 16]),
        rollout_curves(rel, probs, tmp_path / "curves.png", label=3, title="rollout"),
        rollout_curves(rel, probs, tmp_path / "curves_nolabel.png"),
        line_plot([0.1, 0.5, 1.0], {"a": [0.2, 0.5, 0.9], "b": [0.1, None, 0.8]}, tmp_path / "line.png",
                  xlabel="visible fraction", ylabel="accuracy", logx=True, hline=(0.1, "chance")),
        image_grid([image.numpy(), np.zeros((12, 12, 3), np.uint8), np.arange(144).reshape(12, 12) % 10],
                   tmp_path / "grid.png", titles=["x", "y", "z"], ncols=2),
    ]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        with Image.open(p) as im:
            assert im.format == "PNG"
        assert p.with_suffix(".svg").read_text().lstrip().startswith("<?xml")      # the vector twin


def test_gif_has_all_frames(tmp_path, rollout):
    states, _, _, image = rollout
    proj = Projection.fit(states)
    # A converged tail of identical states must still give one GIF frame per step.
    states = states.clone()
    states[10:] = states[10]
    p = save_gif(states, proj, tmp_path / "g" / "roll.gif", image=image)
    assert p.is_file() and p.stat().st_size > 0
    with Image.open(p) as im:
        assert im.n_frames == states.shape[0]
        assert im.info.get("loop") == 0
        assert im.size == (12 * 8 * 2 + 8, 12 * 8 + 4 + 20)         # frames, progress bar, caption strip


def test_report(tmp_path, rollout):
    states, rel, probs, _ = rollout
    proj = Projection.fit(states)
    rollout_curves(rel, probs, tmp_path / "figs" / "curves.png")
    save_gif(states, proj, tmp_path / "figs" / "roll.gif")
    sections = [
        {"title": "Rollout", "text": "<p>Some <em>text</em>.</p>",
         "images": [("figs/curves.png", "curves & residual"), ("figs/roll.gif", "animation")]},
        {"title": "Numbers", "text": "",
         "tables": [{"caption": "acc <1>", "header": ["name", "value"], "rows": [["<b>", 0.123456], ["x", 2]]}]},
    ]
    page = write_report(tmp_path, "Test report", sections, intro="<p>hello</p>")
    assert page == tmp_path / "index.html" and page.is_file()
    text = page.read_text()
    refs = referenced_files(page)
    assert len(refs) == 2 and all(r.is_file() for r in refs)
    assert "<td>&lt;b&gt;</td>" in text and "<td><b></td>" not in text
    assert html.escape("acc <1>") in text and "0.1235" in text
    assert "<em>text</em>" in text and "deqnca" in text.split("<footer>")[1]
    assert "http" not in text and "<script" not in text

    with pytest.raises(ValueError):
        write_report(tmp_path / "other", "bad", [{"title": "x", "images": [("missing.png", "nope")]}])
    assert not (tmp_path / "other" / "index.html").exists()


def test_label_maps_have_a_legend_and_markers_sit_on_top(tmp_path):
    labels = np.arange(100).reshape(10, 10) % 10
    image_grid([labels, labels], tmp_path / "maps.png", cmap="tab10", vmin=0, vmax=9,
               legend=[str(d) for d in range(10)], points=[[(1, 2, "tab:green", "S")], None])
    svg = (tmp_path / "maps.svg").read_text()
    assert all(f">{d}<" in svg for d in range(10)) and ">S<" in svg     # the legend's digits, the marker label


def test_every_gif_frame_is_captioned_with_step_and_residual(tmp_path, rollout):
    from deqnca.viz.figures import relative_residuals, step_caption

    states = rollout[0]
    rel = relative_residuals(states)
    assert rel[0] is None and abs(rel[1] - float((states[1] - states[0]).norm() / states[1].norm())) < 1e-6
    assert step_caption(3, 0.01234) == "step 3   rel. residual 1.2e-02" and step_caption(0, None) == "step 0"
    p = save_gif(states, Projection.fit(states), tmp_path / "roll.gif")
    with Image.open(p) as im:
        im.seek(5)
        strip = np.asarray(im.convert("RGB"))[-20:]
    assert (strip > 200).any() and (strip < 40).mean() > 0.5           # light text on a dark strip
