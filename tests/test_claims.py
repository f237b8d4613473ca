"""Claims with their caveat: the maze comparison says which DT-recall it is and what the geodesic rule builds in,
with parameter counts that are the shipped models' own."""
import re
from pathlib import Path

import deqnca

ROOT = Path(__file__).resolve().parents[1]


def _counts(name):
    model, _ = deqnca.load(name)
    return sum(p.numel() for p in model.rule.parameters()), sum(p.numel() for p in model.parameters())


def _text(rel):
    return re.sub(r"\s+", " ", (ROOT / rel).read_text())


def test_the_maze_comparison_states_its_caveat_with_the_models_own_counts():
    geo_rule, geo_all = _counts("maze/geodesic")
    dt_rule, dt_all = _counts("maze/dt-5to13")
    assert (geo_rule, geo_all) == _counts("maze/geodesic-mix") and (dt_rule, dt_all) == _counts("maze/dt")
    for rel in ("docs/mazes.md", "docs/results.md", "README.md"):
        text = _text(rel)
        assert "shortest-path prior" in text, rel
        assert f"{geo_rule} learned parameters" in text or f"{geo_rule} parameters of the rule" in text, rel
        assert f"{geo_all:,}" in text and f"{dt_all:,}" in text, rel
    for rel in ("docs/mazes.md", "docs/results.md"):
        assert f"{dt_rule:,}" in _text(rel), rel
    assert "sum(p.numel() for p in model.rule.parameters())" in _text("docs/mazes.md")


def test_the_readme_says_which_dt_recall_made_94_4_percent():
    headline = _text("README.md").split("## Headline numbers")[1].split("## ")[0]
    bullet = headline[headline.index("**Mazes**"):]
    before = bullet[:bullet.index("94.4%")]
    assert "`maze/dt-5to13`" in before and "not the shipped `maze/dt`" in before
