"""Screenshots for the docs (headless Chromium, deterministic seeds): the live page's four panels, and, when
given, the report of `deqnca demo` and three pages of the built docs site.

    PYTHONPATH=src python scripts/web_screenshots.py --out docs/images [--cell-model PATH]
    # what a new user sees: from a wheel, in an empty folder, then the screenshots of what it wrote
    deqnca demo --out out/demo && deqnca web --out out/web && mkdocs build -d /tmp/site   # (the site from the repo)
    PYTHONPATH=src python scripts/web_screenshots.py --out docs/images --site out/web --report out/demo \\
        --docs /tmp/site

Live page (`web-*.png`): each panel is driven through the page's own controls and test hook: an MNIST 7 from
the example buttons, the per-cell model played to the end of its 16 steps (its button then offers "replay"),
30 steps of both classifiers then a second of play (the steps/s readout), the equilibrium lizard grown for 150
steps, a mouse stroke across it and a second of regrowth, a size-19 maze after 120 iterations of DT-recall and
a second of play. Report (`report-top.png`, `report-cells.png`): the top of the page (the evaluation table)
and the self-classifying section. Docs (`docs-*.png`): the live page's page, the maze caveat, the headline
numbers' maze section. Every page is checked for links and images that lead nowhere. The PNGs are reduced to
256 colours (tens of KB each).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

# the docs pages: (file name, the page and anchor in the built site, the viewport's height)
DOCS = (("docs-web.png", "web.html", 1000),
        ("docs-mazes-caveat.png", "mazes.html#what-the-comparison-shows-and-what-it-does-not", 1000),
        ("docs-results-mazes.png", "results.html#mazes", 1000))

BROKEN = """() => {
  const bad = [];
  for (const img of document.images) if (!img.complete || img.naturalWidth === 0) bad.push(img.src);
  return bad;
}"""


def save(png: bytes, path: Path) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    img.save(path, optimize=True)
    print(f"{path}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB")


def check_links(page, folder: Path) -> list[str]:
    """Images that did not load and file:// links to files that do not exist."""
    bad = [f"image {s}" for s in page.evaluate(BROKEN)]
    for href in page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
        if href.startswith("file://"):
            from urllib.parse import unquote, urlparse

            target = Path(unquote(urlparse(href).path))
            if not target.exists():
                bad.append(f"link {href}")
    return bad


def play_for(page, panel: str, seconds: float, rate: str | None = None) -> None:
    """Play `panel` (scrolled into view: panels out of view do not compute) for `seconds`."""
    page.locator(f"#{panel}-controls").scroll_into_view_if_needed()
    if rate:
        page.select_option(f"#{panel}-controls select", rate)
    if page.eval_on_selector(f"#{panel}-controls button.play", "b => b.textContent") != "pause":
        page.click(f"#{panel}-controls button.play")
    page.wait_for_timeout(int(1000 * seconds))


def live_page(chromium, index: Path, out: Path) -> list[str]:
    from deqnca.web import browser

    with browser.open_page(chromium, index, width=1000, height=1400) as (page, log):
        page.evaluate("deqncaTest.pauseAll()")
        page.click("#examples button:text-is('7')")
        page.evaluate("deqncaTest.pauseAll()")
        if page.locator("#cell-controls").is_visible():          # played to the end of its step budget
            page.click("#cell-controls button:text-is('reset')")
            play_for(page, "cell", 0.2, "Infinity")
            page.wait_for_function("document.querySelector('#cell-controls button.play').textContent !== 'pause'")
        page.evaluate("deqncaTest.pauseAll()")
        page.evaluate("deqncaTest.panelSteps('duel', 30)")
        page.evaluate("deqncaTest.panelSteps('grow', 150)")
        page.locator("#lizard").scroll_into_view_if_needed()      # the mouse works in the viewport
        box = page.locator("#lizard").bounding_box()
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.4 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.5 * box["height"], steps=8)
        page.mouse.up()
        page.select_option("#maze-model", "maze-dt")           # the panel starts on an equilibrium solver
        page.select_option("#maze-size", "19")
        page.evaluate("deqncaTest.pauseAll()")
        page.click("#maze-controls button:text-is('reset')")    # from step 0 whatever ran meanwhile
        page.evaluate("deqncaTest.panelSteps('maze', 120)")     # of the evaluation's budget of 176 for size 19
        save(page.locator("#draw").screenshot(), out / "web-draw.png")
        for name, panel, rate in (("duel", "duel", "10"), ("grow", "grow", "30"), ("maze", "maze", "10")):
            play_for(page, panel, 1.3, rate)                     # the steps/s readout, measured as it plays
            save(page.locator(f"#{name}").screenshot(), out / f"web-{name}.png")
            page.evaluate("deqncaTest.pauseAll()")
        bad = check_links(page, index.parent)
    return [*log, *bad]


def report(chromium, folder: Path, out: Path) -> list[str]:
    page = chromium.new_page(viewport={"width": 1000, "height": 1250})
    try:
        page.goto((folder / "index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        page.evaluate("() => Promise.all([...document.images].map(i => { i.loading = 'eager'; "
                      "return i.decode().catch(() => null); }))")
        save(page.screenshot(), out / "report-top.png")
        page.locator("h2:text-is('Self-classifying digits')").scroll_into_view_if_needed()
        page.evaluate("document.evaluate(\"//h2[text()='Self-classifying digits']\", document, null, 9, null)"
                      ".singleNodeValue.scrollIntoView()")
        page.wait_for_timeout(300)
        save(page.screenshot(), out / "report-cells.png")
        page.evaluate("() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        return check_links(page, folder)
    finally:
        page.close()


def docs(chromium, site: Path, out: Path) -> list[str]:
    bad = []
    for name, rel, height in DOCS:
        page = chromium.new_page(viewport={"width": 1200, "height": height})
        try:
            path, _, anchor = rel.partition("#")
            page.goto((site / path).resolve().as_uri() + (f"#{anchor}" if anchor else ""))
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)
            save(page.screenshot(), out / name)
            bad += [f"{rel}: {b}" for b in check_links(page, site)]
        finally:
            page.close()
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--cell-model", help="a readout=cell checkpoint for the per-cell panel (default: mnist-cell)")
    ap.add_argument("--site", help="a page written by `deqnca web` (default: write one to a temporary folder)")
    ap.add_argument("--report", help="a folder written by `deqnca demo`: report-top.png and report-cells.png")
    ap.add_argument("--docs", help="the docs site built by `mkdocs build -d DIR`: docs-*.png")
    args = ap.parse_args(argv)

    from deqnca.web import browser
    from deqnca.web.export import write_site

    why = browser.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    with tempfile.TemporaryDirectory() as tmp, browser.launch() as chromium:
        index = (Path(args.site) / "index.html" if args.site
                 else write_site(Path(tmp) / "site", cell_checkpoint=args.cell_model))
        problems += live_page(chromium, index, out)
        if args.report:
            problems += report(chromium, Path(args.report), out)
        if args.docs:
            problems += docs(chromium, Path(args.docs), out)
    if problems:
        print("problems:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
