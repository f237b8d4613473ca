"""Steps per second of the live page in headless Chromium (plain JavaScript, one browser thread).

    PYTHONPATH=src python benchmarks/web_speed.py [--cell-model PATH] [--models-dir DIR] [--only TEXT]
                                                  [--repeats 3] [--json out.json]

Writes the page (deqnca web) to a temporary folder, opens it in the system's Chromium through Playwright
and times, inside the page (performance.now()):
  model rows   one step of the model alone: the MNIST models on a 28x28 MNIST digit from noise, a
               lizard after it has grown for 100 steps (stochastic step, fire mask drawn), a maze
               solver on a new maze of each size (the step, without the read-out head); the max-plus maze
               solvers (geodesic, trace: where the page has them) over their whole solve, from zeros to
               the fixed point (their steps get cheaper as the floods pass: a step recomputes only the
               cells next to one that changed)
  panel rows   what the page does per step while playing: the model step(s), the read-out and one
               render of the panel's canvases and plots per step (the page renders once per frame,
               so playing costs less than this)
Each number is the median over --repeats runs of --steps steps after a warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def chromium_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "chromium (version unknown)"


CASES = [  # (label, what, options)
    ("essay model, 28x28", "essay", {}),
    ("equilibrium model, 28x28", "equilibrium", {}),
    ("per-cell model, 28x28", "cell", {}),
    ("lizard (BPTT), 72x72 grown", "lizard-bptt", {"warmup": 100}),
    ("lizard (equilibrium), 72x72 grown", "lizard-equilibrium", {"warmup": 100}),
    *[(f"maze DT-recall, size {s} ({2 * s + 6} px)", "maze-dt", {"size": s}) for s in (9, 13, 19, 33)],
    *[(f"maze DEQ, size {s} ({2 * s + 6} px)", "maze-deq-res", {"size": s}) for s in (9, 19)],
    *[(f"maze geodesic, size {s} ({2 * s + 6} px), to the fixed point", "maze-geodesic",
       {"size": s, "untilFixed": True}) for s in (33, 59, 201)],
    *[(f"maze trace, size {s} ({s + 2} cells), 5% loops, to the fixed point", "maze-trace",
       {"size": s, "loops": 0.05, "untilFixed": True}) for s in (33, 59, 201)],
    ("panel: per-cell (step + labels + plots)", "panel:cell", {}),
    ("panel: essay + equilibrium (two steps + plots)", "panel:duel", {}),
    ("panel: lizard (step + picture + L2 + plots)", "panel:grow", {"warmup": 100}),
    ("panel: maze size 9, DT-recall (step + head + picture)", "panel:maze", {}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell-model", help="a readout=cell checkpoint for the per-cell rows (skipped without)")
    ap.add_argument("--models-dir", help="the models' folder (default: the shipped ones), e.g. one holding maze/trace")
    ap.add_argument("--only", default="", help="only the cases whose label holds this text (e.g. 'maze')")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    from deqnca.web import browser
    from deqnca.web.export import write_site

    why = browser.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp, browser.launch() as chromium:
        index = write_site(Path(tmp) / "site", models_dir=args.models_dir, cell_checkpoint=args.cell_model)
        with browser.open_page(chromium, index) as (page, log):
            page.evaluate("deqncaTest.pauseAll()")
            have = set(page.evaluate("deqncaTest.models()"))
            for label, what, opts in CASES:
                if args.only not in label or (not what.startswith("panel:") and what not in have):
                    continue
                if what == "panel:cell" and "cell" not in have:
                    continue
                if what == "panel:maze":                 # the panel starts on an equilibrium solver where there is one
                    page.select_option("#maze-model", "maze-dt")
                    page.select_option("#maze-size", "9")
                    page.evaluate("deqncaTest.pauseAll()")
                runs = [page.evaluate("([w, o]) => deqncaTest.bench(w, o)", [what, {"steps": args.steps, **opts}])
                        for _ in range(args.repeats)]
                rows.append({"case": label, "what": what, **opts, "steps_per_s": statistics.median(runs),
                             "runs": runs})
                print(f"  {label:<48} {rows[-1]['steps_per_s']:8.1f} steps/s", flush=True)
            if log:
                print("page log:", *log, sep="\n  ", file=sys.stderr)
    info = {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "date": datetime.date.today().isoformat(),
            "browser": chromium_version(browser.chromium_path()),
            "command": "PYTHONPATH=src python benchmarks/web_speed.py " + " ".join(argv or sys.argv[1:])}
    print(f"\nmachine: {info['machine']}\ndate: {info['date']}\nbrowser: {info['browser']} (headless, "
          f"--disable-gpu)\n\n| case | steps/s |\n|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['steps_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
