"""The documentation: the site builds with `mkdocs build --strict`, works from disk (every local link and
image resolves, nothing is loaded from the network, the search answers in headless chromium from file://),
the API reference covers every public name, the README stays short and agrees with the docs' headline
numbers, every paper is linked, and the citation file matches the version."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

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


NOTEBOOK_PAGES = ["notebooks/tour.html", "notebooks/own-rule.html", "notebooks/grow.html", "notebooks/mazes.html"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with `mkdocs build --strict` into a temporary folder."""
    if any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings", "mkdocs_jupyter")):
        pytest.skip("mkdocs/mkdocstrings/mkdocs-jupyter not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_the_site_builds_strictly(site):
    assert (site / "reference.html").is_file() and (site / "figures").is_dir()
    html = (site / "reference.html").read_text()
    assert "EquilibriumModel" in html
    for page in NOTEBOOK_PAGES:             # the notebooks, rendered with the outputs they are committed with
        html = (site / page).read_text()
        assert "jupyter-wrapper" in html and "data:image/png;base64" in html, page
    assert (site / "search" / "search_index.js").is_file(), "the offline plugin's search index"


class _Refs(HTMLParser):
    """Every link (a, link) and every embedded resource (img, script, iframe, source, ...) of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.resources = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("a", "link") and attrs.get("href") is not None:
            (self.resources if tag == "link" and "stylesheet" in (attrs.get("rel") or "") else self.links).append(
                attrs["href"])
        if tag in ("img", "script", "iframe", "source", "audio", "video", "embed") and "src" in attrs:
            self.resources.append(attrs["src"] or "")


def test_every_local_link_and_image_of_the_site_resolves(site):
    """The site is read from disk: every relative link and resource must be a file of the site, and nothing
    a page shows or runs (images, scripts, stylesheets) may come from the network."""
    # 404.html is a web server's page (its links are absolute, from the server's root): never opened from disk
    missing, remote, pages = [], [], sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) > 20
    for page in pages:
        refs = _Refs()
        refs.feed(page.read_text())
        for ref in refs.links + refs.resources:
            url = urlsplit(ref)
            if url.scheme or ref.startswith("//"):
                if ref in refs.resources and url.scheme != "data":
                    remote.append(f"{page.relative_to(site)}: {ref}")
                continue
            if not url.path:
                if not ref:                             # src="": a resource with no address
                    missing.append(f"{page.relative_to(site)}: empty address")
                continue                                # a fragment of the page itself
            target = (page.parent / unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                missing.append(f"{page.relative_to(site)}: {ref}")
    assert not missing, f"{len(missing)} broken local links, e.g. {missing[:10]}"
    assert not remote, f"resources from the network: {remote[:10]}"


@pytest.mark.parametrize("start", ["index.html", "notebooks/tour.html"])
def test_search_works_when_the_site_is_opened_from_disk(site, start):
    """Typing a query into the search box of the built site, opened as file:// in headless chromium with the
    network off, lists results (not 'Initializing search'), and only file:// is ever requested."""
    from deqnca.web import browser

    why = browser.missing()
    if why:
        pytest.skip(why)
    with browser.launch() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        log = []
        page.on("console", lambda m: log.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda e: log.append(f"page error: {e}"))
        page.on("request", lambda r: None if r.url.startswith("file://") else log.append(f"request: {r.url}"))
        try:
            page.goto((site / start).as_uri())
            page.click("input.md-search__input", timeout=20_000)
            page.keyboard.type("damage", delay=20)
            try:
                page.wait_for_function("document.querySelectorAll('.md-search-result__item').length > 0",
                                       timeout=20_000)
            except Exception as e:
                meta = page.text_content(".md-search-result__meta")
                raise AssertionError(f"no search results from {start}: the search says {meta!r}; {log}") from e
            meta = page.text_content(".md-search-result__meta")
            hits = [a.get_attribute("href") for a in page.query_selector_all(".md-search-result__item a")]
        finally:
            page.close()
    assert "Initializing" not in meta and "matching" in meta, meta
    assert any("notebooks/grow.html" in h for h in hits), hits       # the notebooks are searched too
    assert not log, log


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
    for page in [*DOCS.glob("*.md"), *DOCS.glob("howto/*.md"), *DOCS.glob("notebooks/*.ipynb")]:
        text = page.read_text()
        if page.suffix == ".ipynb":     # the notebooks' Markdown cells, as GitHub and Jupyter show them
            text = "".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_the_citation_file_matches_the_version():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the docs tools")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == deqnca.__version__ and cff["license"] == "MIT"
    titles = " ".join(r["title"] for r in cff["references"])
    assert "Neural Cellular Automata and Deep Equilibrium Models" in titles and len(cff["references"]) >= 7
