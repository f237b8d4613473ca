"""The maze solvers' numbers in docs/mazes.md ("Path independence: results"): every evaluation as one
`deqnca maze eval` command writing results/mazes/campaign/<name>-<generator>-<size>.json, and the docs'
tables, the accuracy-against-iterations figure and the pictures of failures built from those files.

    python scripts/maze_campaign.py run --name geo-mix --checkpoint maze/geodesic-mix \\
        --generators dfs prim kruskal wilson division --sizes 9 19 33 59 --limit 9=1000,19=1000,33=300,59=100
    python scripts/maze_campaign.py run --name geo-mix --checkpoint maze/geodesic-mix --sizes 201 --limit 201=10 \\
        --aa-count 2
    python scripts/maze_campaign.py table                 # markdown for docs/mazes.md, from results/mazes/campaign
    python scripts/maze_campaign.py loops trace dt-loops  # markdown: per maze spec (loops, percolation) and size
    python scripts/maze_campaign.py figures --out docs/figures/mazes   # accuracy vs iterations, failures

Each part (one model, one generator, one size) is its own process and its own file: a part already on
disk is skipped, so a campaign stopped at any point goes on where it was, and two campaigns can run side by
side on two cores (one thread each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("results/mazes/campaign")
GENERATORS = ("dfs", "prim", "kruskal", "wilson", "division")


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores"


def part_file(name: str, generator: str, size: int, first: int = 0) -> Path:
    return RESULTS / f"{name}-{generator}-{size}{f'-from{first}' if first else ''}.json"


def run(a) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, "src")
    from deqnca.tasks.maze.evaluate import parse_size_map

    limits, caps = parse_size_map(a.limit, a.sizes), parse_size_map(a.max_iters, a.sizes)
    # glibc's dynamic mmap threshold lets the freed buffers of large mazes fragment the heap: a 201x201 solve grew
    # to 17 GB and was killed; a fixed 4 MiB threshold keeps it at ~0.5 GB
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MALLOC_MMAP_THRESHOLD_": "4194304"}
    for g in a.generators:
        for s in a.sizes:
            out = part_file(a.name, g, s, a.first)
            if out.exists():
                print(f"{out}: done already", file=sys.stderr)
                continue
            cmd = ["deqnca", "maze", "eval", a.checkpoint, "--sizes", str(s), "--generators", g, "--device", "cpu",
                   "--limit-per-size", str(limits[s] or 100), "--aa-count", str(a.aa_count),
                   "--out", f"out/maze-campaign/{a.name}-{g}-{s}", "--json"]
            if caps[s]:
                cmd += ["--max-iters", str(caps[s])]
            if a.compile:
                cmd += ["--compile"]
            if a.readout_symmetry:
                cmd += ["--readout-symmetry", a.readout_symmetry]
            if a.no_curve:
                cmd += ["--no-curve"]
            if a.first:
                cmd += ["--first", str(a.first)]
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-m", "deqnca.cli", *cmd[1:]], env=env, capture_output=True,
                                  text=True)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            (res,) = json.loads(proc.stdout.strip().splitlines()[-1]).values()
            record = {"name": a.name, "checkpoint": a.checkpoint, "model": res["model"], "generator": g,
                      "size": s, "row": res["by_generator"][g][str(s)],
                      "command": " ".join(cmd), "threads": a.threads, "seconds": round(time.time() - t0, 1),
                      "date": time.strftime("%Y-%m-%d"), "machine": _machine()}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, out)                    # a part on disk is always whole
            r = record["row"]
            print(f"{a.name} {g} {s}x{s}: {100 * r['accuracy']:.1f}% of {r['n']}, {record['seconds']:.0f} s",
                  file=sys.stderr)
    return 0


def merge(a: dict, b: dict) -> dict:
    """Two parts of one (model, generator, size) on consecutive mazes (`run --first`) as one record: counts and
    failures added, means weighted by mazes, the most iterations the larger; the residual median is the larger of
    the parts' medians, and the accuracy curve is kept only where both parts drew it at the same marks."""
    ra, rb = a["row"], b["row"]
    if ra.get("first", 0) + ra["n"] != rb.get("first", 0):
        raise ValueError(f"{a['name']} {a['generator']} {a['size']}: parts do not follow each other")
    n = ra["n"] + rb["n"]

    def mean(key, wa=ra["n"], wb=rb["n"]):
        if ra[key] is None or rb[key] is None or not wa + wb:
            return ra[key] if rb[key] is None else rb[key]
        return (ra[key] * wa + rb[key] * wb) / (wa + wb)

    row = {**ra, "n": n, "accuracy": mean("accuracy"), "mean_iters": mean("mean_iters"),
           "ms_per_maze": mean("ms_per_maze"), "aa_score": mean("aa_score", ra["aa_n"], rb["aa_n"]),
           "aa_n": ra["aa_n"] + rb["aa_n"], "most_iters": max(ra["most_iters"], rb["most_iters"]),
           "rel_residual_median": max(ra["rel_residual_median"], rb["rel_residual_median"]),
           "failed": ra["failed"] + rb["failed"], "failed_pixels": ra["failed_pixels"] + rb["failed_pixels"],
           "n_failed": ra["n_failed"] + rb["n_failed"]}
    if ra["curve_iters"] == rb["curve_iters"]:
        row["curve_accuracy"] = [(x * ra["n"] + y * rb["n"]) / n
                                 for x, y in zip(ra["curve_accuracy"], rb["curve_accuracy"])]
    else:
        row["curve_iters"], row["curve_accuracy"] = [ra["max_iters"]], [row["accuracy"]]
    best = max(range(len(row["curve_iters"])), key=lambda j: row["curve_accuracy"][j])
    row["best_accuracy"], row["best_iters"] = row["curve_accuracy"][best], row["curve_iters"][best]
    return {**a, "row": row, "seconds": a["seconds"] + b["seconds"], "command": f"{a['command']}; {b['command']}",
            "date": max(a["date"], b["date"])}


def load_all() -> dict:
    """{name: {generator: {size: record}}} from every part file; parts extending another (`run --first`) merged."""
    out: dict = {}
    recs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))]
    for rec in sorted(recs, key=lambda r: r["row"].get("first", 0)):
        by_size = out.setdefault(rec["name"], {}).setdefault(rec["generator"], {})
        size = rec["size"]
        by_size[size] = merge(by_size[size], rec) if size in by_size else rec
    return out


def _cell(rec) -> str:
    if rec is None:
        return "–"
    r = rec["row"]
    return f"{100 * r['accuracy']:.1f}% ({r['n']})"


def table(a) -> int:
    data = load_all()
    names = a.names or sorted(data)
    sizes = sorted({s for n in names for g in data.get(n, {}).values() for s in g})
    print("Solved (every pixel right), % of the first N test mazes (N in brackets):\n")
    print("| model | generator | " + " | ".join(f"{s}×{s}" for s in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for n in names:
        for g in GENERATORS:
            if g in data.get(n, {}):
                print(f"| {n} | {g} | " + " | ".join(_cell(data[n][g].get(s)) for s in sizes) + " |")
    print("\nOther generators against depth-first (points; the goal: within 2 at 9, 19, 33 and 59):\n")
    print("| model | generator | " + " | ".join(f"{s}×{s}" for s in (9, 19, 33, 59)) + " |")
    print("|---|---|---|---|---|---|")
    for n in names:
        dfs = data.get(n, {}).get("dfs", {})
        for g in GENERATORS[1:]:
            if g not in data.get(n, {}):
                continue
            cells = []
            for s in (9, 19, 33, 59):
                if s in dfs and s in data[n][g]:
                    cells.append(f"{100 * (data[n][g][s]['row']['accuracy'] - dfs[s]['row']['accuracy']):+.1f}")
                else:
                    cells.append("–")
            print(f"| {n} | {g} | " + " | ".join(cells) + " |")
    print("\nDepth-first mazes: AA, iterations, residual, time (one thread):\n")
    print("| model | size | solved | best (at it) | AA (mazes) | iterations: mean, most (cap) | median rel. residual | "
          "wrong px in a failed maze: median, most | s per maze | part's seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        for s, rec in sorted(data.get(n, {}).get("dfs", {}).items()):
            r = rec["row"]
            aa = f"{r['aa_score']:.6f} ({r['aa_n']})" if r["aa_score"] is not None else "–"
            px = sorted(r.get("failed_pixels") or [])
            # parts evaluated before the evaluation counted wrong pixels have failures but no counts
            px = f"{px[len(px) // 2]}, {px[-1]}" if px else ("not recorded" if r.get("n_failed") else "–")
            print(f"| {n} | {s} | {100 * r['accuracy']:.1f}% of {r['n']} | {100 * r['best_accuracy']:.1f}% "
                  f"({r['best_iters']}) | {aa} | {r['mean_iters']:.0f}, {r['most_iters']} ({r['max_iters']}) | "
                  f"{r['rel_residual_median']:.1e} | {px} | {r['ms_per_maze'] / 1000:.2f} | {rec['seconds']:.0f} |")
    print("\nAgainst the goals (an equilibrium solver trained on <= 13x13):\n")
    print("| goal | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))

    def acc(n, g, size):
        rec = data.get(n, {}).get(g, {}).get(size)
        return None if rec is None else 100 * rec["row"]["accuracy"]

    def goal_row(label, values):
        print(f"| {label} | " + " | ".join(values) + " |")

    for size, goal in ((9, 99.9), (59, 97.3), (201, 90.0)):
        cells = []
        for n in names:
            v = acc(n, "dfs", size)
            cells.append("–" if v is None else f"{v:.1f}% ({'met' if v >= goal - 1e-9 else f'{goal - v:.1f} short'})")
        goal_row(f"≥ {goal}% at {size}×{size}", cells)
    cells = []
    for n in names:
        aas = [rec["row"]["aa_score"] for g in data.get(n, {}).values() for rec in g.values()
               if rec["row"]["aa_score"] is not None]
        cells.append(f"{min(aas):.6f} lowest of {len(aas)} rows ({'met' if min(aas) >= 0.99 else 'missed'})"
                     if aas else "–")
    goal_row("AA ≥ 0.99", cells)
    cells = []
    for n in names:
        diffs = [acc(n, g, size) - acc(n, "dfs", size) for g in GENERATORS[1:] for size in (9, 19, 33, 59)
                 if acc(n, g, size) is not None and acc(n, "dfs", size) is not None]
        cells.append(f"{min(diffs):+.1f} to {max(diffs):+.1f} points over {len(diffs)} pairs" if diffs else "–")
    goal_row("other generators within 2 points of depth-first (9, 19, 33, 59)", cells)
    recs = [rec for n in names for g in data.get(n, {}).values() for rec in g.values()]
    if recs:
        print(f"\nMachine: {recs[0]['machine']}; dates {min(r['date'] for r in recs)} to "
              f"{max(r['date'] for r in recs)}; commands in each file's `command`.")
    return 0


def figures(a) -> int:
    """Accuracy against test-time iterations (depth-first, every size) and the first failure of each model
    at each size and generator (`deqnca maze show --index`)."""
    sys.path.insert(0, "src")
    from deqnca.viz.figures import line_plot

    data = load_all()
    names = a.names or sorted(data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    series, marks = {}, set()
    for n in names:
        for s, rec in sorted(data.get(n, {}).get("dfs", {}).items()):
            r = rec["row"]
            marks |= set(r["curve_iters"])
            series[f"{n} {s}×{s}"] = r
    marks = sorted(marks)
    ys = {k: [dict(zip(r["curve_iters"], r["curve_accuracy"])).get(m, r["accuracy"] if m > r["curve_iters"][-1]
                                                                     else None) for m in marks]
          for k, r in series.items()}
    for ext in ("png", "svg"):
        line_plot(marks, ys, out / f"accuracy_vs_iters.{ext}", "test-time iterations", "fraction fully solved",
                  "depth-first test mazes: solved against iterations (trained on ≤ 13×13)", logx=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    shown = 0
    for n in ([] if a.curves_only else names):
        for g, by_size in data.get(n, {}).items():
            for s, rec in sorted(by_size.items()):
                if not rec["row"].get("failed") or s not in a.sizes or g not in a.generators:
                    continue
                i = rec["row"]["failed"][0]
                cmd = [sys.executable, "-m", "deqnca.cli", "maze", "show", rec["checkpoint"], "--size", str(s),
                       "--index", str(i), "--generator", g, "--device", "cpu", "--out", str(out / "failures")]
                if rec["model"] == "dt":            # the geodesic model's show stops at its exact fixed point
                    cmd += ["--max-iters", str(rec["row"]["max_iters"])]
                if rec["row"].get("readout_symmetry"):
                    cmd += ["--readout-symmetry", rec["row"]["readout_symmetry"]]
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                for ext in ("gif", "svg"):          # the docs show the still; the rest is `maze show`'s to make
                    for f in (out / "failures").glob(f"*-size{s}-{i}*.{ext}"):
                        f.unlink()
                shown += 1
    print(f"wrote {out / 'accuracy_vs_iters.png'} and {shown} failure pictures under {out / 'failures'}")
    return 0


def loops_table(a) -> int:
    """Per model and maze spec (every spec it was evaluated on, perfect ones included), the share solved at each
    size, then the worst AA and the mazes marked outside the start's region over all its rows."""
    data = load_all()
    sizes = sorted({s for n in a.names for g in data.get(n, {}).values() for s in g})
    print("| model | maze spec | " + " | ".join(f"{s}×{s}" for s in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for n in a.names:
        for g in sorted(data.get(n, {}), key=lambda g: (g.split("+")[0] == "percolation", "loops" in g, g)):
            print(f"| {n} | {g} | " + " | ".join(_cell(data[n][g].get(s)) for s in sizes) + " |")
    print()
    for n in a.names:
        rows = [rec["row"] for g in data.get(n, {}).values() for rec in g.values()]
        aas = [r["aa_score"] for r in rows if r["aa_score"] is not None]
        outside = sum(r.get("marked_outside", 0) for r in rows)
        mazes = sum(r["n"] for r in rows)
        print(f"- {n}: {mazes} mazes in {len(rows)} rows; lowest AA {min(aas):.6f} ({sum(r['aa_n'] for r in rows)} "
              f"re-solves); mazes with a pixel marked outside the start's region: {outside}" if aas else
              f"- {n}: {mazes} mazes; mazes marked outside the start's region: {outside}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True, help="the model's name in the tables")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--generators", nargs="+", default=["dfs"], help="maze specs (deqnca.tasks.maze.loops): dfs, "
                   "prim+loops=0.05, percolation+p=0.3, ...")
    r.add_argument("--sizes", nargs="+", type=int, required=True)
    r.add_argument("--limit", default="", help="mazes per size, SIZE=N pairs (default 100)")
    r.add_argument("--max-iters", default="", help="test-time caps, SIZE=N pairs (default: the model's)")
    r.add_argument("--aa-count", type=int, default=10)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--compile", action="store_true", help="`maze eval --compile` (the geodesic models)")
    r.add_argument("--readout-symmetry", choices=["none", "d4"], help="`maze eval --readout-symmetry` (geodesic)")
    r.add_argument("--no-curve", action="store_true", help="`maze eval --no-curve`: no accuracy-against-iterations")
    r.add_argument("--first", type=int, default=0, help="`maze eval --first`: mazes N.. (a part extending another)")
    t = sub.add_parser("table")
    t.add_argument("names", nargs="*")
    lt = sub.add_parser("loops", help="markdown: solved per maze spec and size, for mazes with loops")
    lt.add_argument("names", nargs="+")
    f = sub.add_parser("figures")
    f.add_argument("names", nargs="*")
    f.add_argument("--out", default="docs/figures/mazes")
    f.add_argument("--sizes", type=int, nargs="+", default=[9, 19, 33, 59], help="failure pictures at these sizes")
    f.add_argument("--generators", nargs="+", default=list(GENERATORS), help="... and of these distributions")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--curves-only", action="store_true", help="the accuracy figure, no failure pictures")
    a = p.parse_args(argv)
    return {"run": run, "table": table, "figures": figures, "loops": loops_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
