"""The documentation: the site builds with `mkdocs build --strict`, the API reference covers every public
name, the README stays short and agrees with the docs' headline numbers, every paper is linked, and the
citation file matches the version."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import deqnca

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAPERS = {
    "DEQ": "https://arxiv.org/abs/1909.01377",
    "TorchDeq": "https://arxiv.org/abs/2310.18605",
    "Growing NCA": "https://distill.pub/2020/growing-ca/",
    "Self-classifying MNIST": "https://distill.pub/2020/selforg/mnist/",
    "Deep Thinking": "https://arxiv.org/abs/2202.05826",
    "Path Independence": "https://arxiv.org/abs/2211.09961",
}
# the Results pages written for readers (speed.md is kept with the benchmarks)
RESULT_PAGES = ["results.md", "mnist.md", "nca.md", "grow.md", "mazes.md", "web.md"]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs/mkdocstrings not installed (pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "reference.html").is_file() and (tmp_path / "site" / "figures").is_dir()
    html = (tmp_path / "site" / "reference.html").read_text()
    assert "EquilibriumModel" in html


def test_the_reference_covers_every_public_name():
    text = (DOCS / "reference.md").read_text()
    missing = [n for n in deqnca.__all__ if n not in text]
    assert not missing, f"add them to docs/reference.md: {missing}"


def test_every_paper_is_linked_in_the_readme_and_the_concepts():
    for page in (ROOT / "README.md", DOCS / "concepts.md"):
        text = page.read_text()
        missing = [name for name, url in PAPERS.items() if url not in text]
        assert not missing, f"{page.name} does not link {missing}"


def test_the_readme_is_short_and_its_headline_numbers_are_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    assert readme.index("make demo") < readme.index("## ") and "make test" in readme.split("## ")[0]
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "---" not in line]
    results = (DOCS / "results.md").read_text()
    assert rows and all(row in results for row in rows), "the README's headline table must be the docs' table"
    numbers = set(re.findall(r"\*\*([0-9][0-9.,]*%?)", readme))
    pages = "".join((DOCS / p).read_text() for p in RESULT_PAGES)
    assert numbers and all(n in pages for n in numbers), sorted(n for n in numbers if n not in pages)


def test_results_pages_are_written_for_readers():
    for name in RESULT_PAGES:
        text = (DOCS / name).read_text()
        assert not re.search(r"\bissue\b", text, re.IGNORECASE), f"{name} still speaks of an issue"
        assert "docs/results/" not in text and "models/mnist" not in text, f"{name} names an old path"


def test_links_between_pages_resolve():
    for page in [*DOCS.glob("*.md"), *DOCS.glob("howto/*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_the_citation_file_matches_the_version():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the docs tools")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == deqnca.__version__ and cff["license"] == "MIT"
    titles = " ".join(r["title"] for r in cff["references"])
    assert "Neural Cellular Automata and Deep Equilibrium Models" in titles and len(cff["references"]) >= 7
