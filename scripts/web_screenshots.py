"""Screenshots of the live page's four panels for docs/web.md (headless Chromium, deterministic seeds).

    PYTHONPATH=src python scripts/web_screenshots.py --out docs/images [--cell-model PATH]

Each panel is driven through the page's own controls and test hook: an MNIST 7 from the example
buttons, 16 steps of the per-cell model from noise, 30 of both classifiers, the lizard grown for 150 steps, then a
mouse stroke across it and 12 steps of regrowth, a size-19 maze after its 176 iterations of DT-recall.
The PNGs are reduced to 256 colours (a few tens of KB each).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--cell-model", help="a readout=cell checkpoint for the per-cell panel")
    args = ap.parse_args(argv)

    from PIL import Image

    from deqnca.web import browser
    from deqnca.web.export import write_site

    why = browser.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, browser.launch() as chromium:
        index = write_site(Path(tmp) / "site", cell_checkpoint=args.cell_model)
        with browser.open_page(chromium, index, width=1000, height=1400) as (page, log):
            page.evaluate("deqncaTest.pauseAll()")
            page.click("#examples button:text-is('7')")
            page.evaluate("deqncaTest.pauseAll()")
            if page.locator("#cell-controls").is_visible():
                page.click("#cell-controls button:text-is('reset')")
                page.evaluate("deqncaTest.panelSteps('cell', 16)")
            page.evaluate("deqncaTest.panelSteps('duel', 30)")
            page.evaluate("deqncaTest.panelSteps('grow', 150)")
            page.locator("#lizard").scroll_into_view_if_needed()      # the mouse works in the viewport
            box = page.locator("#lizard").bounding_box()
            page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.4 * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.5 * box["height"], steps=8)
            page.mouse.up()
            page.evaluate("deqncaTest.panelSteps('grow', 12)")
            page.select_option("#maze-size", "19")
            page.evaluate("deqncaTest.pauseAll()")
            page.click("#maze-controls button:text-is('reset')")   # from step 0 whatever ran meanwhile
            page.evaluate("deqncaTest.panelSteps('maze', 176)")   # the evaluation's budget for size 19
            for name, section in (("draw", "#draw"), ("duel", "#duel"), ("grow", "#grow"), ("maze", "#maze")):
                png = page.locator(section).screenshot()
                img = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
                path = out / f"web-{name}.png"
                img.save(path, optimize=True)
                print(f"{path}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB")
            if log:
                print("page log:", *log, sep="\n  ", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
