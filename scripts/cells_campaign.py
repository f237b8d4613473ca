"""The self-classifying digits' numbers in docs/cells.md: every evaluation as one `deqnca cells eval` command
writing results/cells/<model>-<part>.json, and the docs table built from those files.

    python scripts/cells_campaign.py run --model article --checkpoint cells/article --parts full long
    python scripts/cells_campaign.py run --model consensus --checkpoint cells/consensus --parts all --shards 2
    python scripts/cells_campaign.py table            # the markdown of docs/cells.md, from results/cells/
    python scripts/cells_campaign.py progress runs/cells-article-seed0 runs/cells-equilibrium-seed0

Parts (each a separate process, so two can run side by side with one thread each):
- full: the whole test set (10,000 digits) to 200 steps, the article's table (marks 20, 80, 200)
- long: `--long-images` evenly spaced digits to 10,000 steps (marks 20, 80, 200, 1,000, 10,000)
- mutation: `--mutation-images` digits, the article's mutation test (a new digit at step 200, 200 more steps)
- canvases: 100 canvases of 3 digits to 200 steps (per-digit accuracy)
- solved: the whole test set at the fixed point a solver reaches (deterministic rules: the equilibrium models)

`--shards N` runs the parts full, long and mutation as N processes side by side (`cells eval --shard K/N`) and
merges their files into one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("results/cells")
PARTS = ("full", "long", "mutation", "canvases", "solved")


def part_args(part: str, a) -> list[str]:
    """The `deqnca cells eval` flags of one part."""
    return {"full": ["--images", "10000", "--marks", "20,80,200", "--curves"],
            "long": ["--images", str(a.long_images), "--marks", "20,80,200,1000,10000", "--curves"],
            "mutation": ["--images", str(a.mutation_images), "--marks", "200", "--mutation"],
            "canvases": ["--images", "1", "--marks", "20,80,200", "--canvases", "100"],
            "solved": ["--images", "10000", "--marks", "1", "--solve", "--max-iter", "300", "--tol", "1e-6"]}[part]


def _merge_rows(rows: list[dict]) -> dict:
    """One evaluation row from the same row of several shards: shares weighted by cells (accuracy) or
    digits (the rest), the best step recomputed from the merged curves (absent without curves)."""
    cells, digits = sum(r["cells"] for r in rows), sum(r["digits"] for r in rows)

    def weight(key, r):
        return r["cells"] / cells if key == "accuracy" else r["digits"] / digits

    merged = {"name": rows[0]["name"], "steps": rows[0]["steps"], "cells": cells, "digits": digits, "at": {}}
    for m in rows[0]["at"]:
        merged["at"][m] = {k: sum(weight(k, r) * r["at"][m][k] for r in rows) for k in rows[0]["at"][m]
                           if k not in ("rel_residual", "nonfinite")}
        # the residual is a mean over the digits whose state is finite (all of them in files without the count)
        finite = [r["digits"] - r["at"][m].get("nonfinite", 0) for r in rows]
        merged["at"][m]["rel_residual"] = sum(f * r["at"][m]["rel_residual"] for f, r in zip(finite, rows)
                                              if f) / max(sum(finite), 1)
        if "nonfinite" in rows[0]["at"][m]:
            merged["at"][m]["nonfinite"] = digits - sum(finite)
    if all("curve" in r for r in rows):
        merged["curve"] = {k: [sum(weight(k, r) * r["curve"][k][t] for r in rows) for t in range(merged["steps"])]
                           for k in rows[0]["curve"]}
        merged["top"] = {}
        for k in ("accuracy", "agreement"):
            best = max(range(merged["steps"]), key=lambda t: (merged["curve"][k][t], -t))
            merged["top"][k] = {"value": merged["curve"][k][best], "step": best + 1}
    return merged


def run(a) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = PARTS if "all" in a.parts else a.parts
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for part in parts:
        out = RESULTS / f"{a.model}-{part}.json"
        shards = a.shards if part in ("full", "long", "mutation") else 1
        cmd = [sys.executable, "-m", "deqnca.cli", "cells", "eval", a.checkpoint, "--device", "cpu",
               "--batch-size", "256", *part_args(part, a)] + (["--compile"] if a.compile else [])
        t0 = time.time()
        outs = [out] if shards == 1 else [out.with_suffix(f".shard{k}of{shards}.json") for k in range(shards)]
        procs = []
        for k, o in enumerate(outs):
            one = cmd + ["--out", str(o)] + ([] if shards == 1 else ["--shard", f"{k}/{shards}"])
            print("$ " + " ".join(one[1:]), flush=True)
            procs.append(subprocess.Popen(one, env=env))
        rcs = [p.wait() for p in procs]
        if any(rcs):
            return max(rcs)
        if shards > 1:          # one file, as one process would have written it (its own random draws aside)
            pieces = [json.loads(o.read_text()) for o in outs]
            record = {**pieces[0], "images": sum(p["images"] for p in pieces), "shard": f"merged from {shards}",
                      "rows": [_merge_rows([p["rows"][i] for p in pieces]) for i in range(len(pieces[0]["rows"]))]}
            out.write_text(json.dumps(record, indent=1) + "\n")
            for o in outs:
                o.unlink()
        record = json.loads(out.read_text())
        sharded = f" (in {shards} shards, --shard K/{shards})" if shards > 1 else ""
        record.update({"command": "deqnca " + " ".join(cmd[3:]) + sharded, "seconds": round(time.time() - t0, 1),
                       "threads": a.threads, "date": time.strftime("%Y-%m-%d")})
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"  {part}: {record['seconds']:.0f} s", flush=True)
    return 0


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _res(row: dict) -> str:
    from deqnca.tasks.cells.cli import residual_text

    return residual_text(row, digits=1)


def _load(model: str, part: str):
    p = RESULTS / f"{model}-{part}.json"
    return json.loads(p.read_text()) if p.exists() else None


def table(a) -> int:
    """Markdown: the article's columns on the whole test set; every step count (20, 80, 200 on the whole
    set, 200, 1,000 and 10,000 on the long rollouts' digits, the solver's fixed point on the whole set)
    with the relative residual; then the mutation and the canvases, per model."""
    lines = ["| model | digits | top cell accuracy | cell accuracy at 200 | top total agreement | "
             "agreement at 200 |", "|---|---|---|---|---|---|"]
    steps = ["| model | step | digits | cell accuracy | total agreement | relative residual |",
             "|---|---|---|---|---|---|"]
    other = ["| model | test | digits | cell accuracy | total agreement |", "|---|---|---|---|---|"]
    for model in a.models:
        full = _load(model, "full")
        if full:
            r = full["rows"][0]
            top, at = r["top"], r["at"]["200"]
            lines.append(f"| {model} | {r['digits']:,} | {_pct(top['accuracy']['value'])} (step "
                         f"{top['accuracy']['step']}) | {_pct(at['accuracy'])} | {_pct(top['agreement']['value'])} "
                         f"(step {top['agreement']['step']}) | {_pct(at['agreement'])} |")
            for m, row in r["at"].items():
                steps.append(f"| {model} | {int(m):,} | {r['digits']:,} | {_pct(row['accuracy'])} | "
                             f"{_pct(row['agreement'])} | {_res(row)} |")
        long = _load(model, "long")
        if long:
            r = long["rows"][0]
            for m in ("200", "1000", "10000"):
                row = r["at"][m]
                steps.append(f"| {model} | {int(m):,} | {r['digits']:,} | {_pct(row['accuracy'])} | "
                             f"{_pct(row['agreement'])} | {_res(row)} |")
        sol = _load(model, "solved")
        if sol:
            s = sol["solved"]
            steps.append(f"| {model} | the fixed point ({sol.get('solver', 'solver')}, {s['nstep']:.0f} steps) | "
                         f"{sol['images']:,} | {_pct(s['accuracy'])} | {_pct(s['agreement'])} | "
                         f"{s['rel_residual']:.1e} |")
        mut = _load(model, "mutation")
        if mut:
            before, after = mut["rows"][0]["at"]["200"], mut["rows"][1]["at"]["200"]
            n = mut["rows"][0]["digits"]
            other.append(f"| {model} | step 200, no mutation | {n:,} | {_pct(before['accuracy'])} | "
                         f"{_pct(before['agreement'])} |")
            other.append(f"| {model} | 200 steps after a mutation at 200 | {n:,} | {_pct(after['accuracy'])} | "
                         f"{_pct(after['agreement'])} |")
        can = _load(model, "canvases")
        if can:
            r = can["rows"][-1]["at"]["200"]
            other.append(f"| {model} | 100 canvases of 3 digits, step 200 (per-digit accuracy "
                         f"{_pct(r['digit_accuracy'])}) | {can['rows'][-1]['digits']:,} | {_pct(r['accuracy'])} | "
                         f"{_pct(r['agreement'])} |")
    print("\n".join(lines) + "\n\n" + "\n".join(steps) + "\n\n" + "\n".join(other))
    return 0


def progress(a) -> int:
    """Markdown: a run's held-out evaluations (metrics.jsonl: 128 test digits every 1,000 steps) and its
    training accuracy, per evaluation."""
    print("| run | step | train cell accuracy (last 50 steps) | held-out cell accuracy at 200 | agreement at 200 | "
          "residual at 200 |\n|---|---|---|---|---|---|")
    for run in a.runs:
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
        train = {r["step"]: r for r in records if "train_accuracy" in r}
        for r in records:
            if "eval_accuracy@200" not in r:
                continue
            step = r.get("step", r.get("global_step"))
            if a.every and step % a.every:
                continue
            print(f"| {Path(run).name} | {step:,} | {_pct(train.get(step, {}).get('train_accuracy'))} | "
                  f"{_pct(r['eval_accuracy@200'])} | "
                  f"{_pct(r['eval_agreement@200'])} | {r['eval_rel_residual@200']:.1e} |")
    return 0


def pieces(a) -> int:
    """How many test digits' alive cells form more than one 8-connected piece (cells that can never hear
    from the rest of their digit: a local rule's total agreement needs each piece right on its own)."""
    import torch
    import torch.nn.functional as F

    from deqnca.data.idx import load_mnist

    x, _ = load_mnist(split="test")
    alive = x[:, 0] > 0.1
    ids = (torch.arange(1, 28 * 28 + 1, dtype=torch.float32).view(1, 28, 28) * alive).clone()
    while True:                       # every alive cell takes the largest id of its 3×3 neighbourhood
        new = F.max_pool2d(ids[:, None], 3, 1, 1)[:, 0] * alive
        if torch.equal(new, ids):
            break
        ids = new
    n = torch.tensor([len(torch.unique(i[i > 0])) for i in ids])
    print(f"{int((n > 1).sum())} of {len(n):,} test digits ({100 * (n > 1).float().mean():.2f}%) have more than one "
          f"8-connected piece of alive cells (at most {int(n.max())})")
    return 0


def reach(a) -> int:
    """How far a self-classifying model's cells hear: the right half of `--digits` test digits is erased and
    the labels of the left half's alive cells compared, by distance from the cut (both rolled `--steps`)."""
    import torch

    from deqnca import load
    from deqnca.data.idx import load_mnist

    torch.set_num_threads(1)
    model, _ = load(a.checkpoint)
    x, _ = load_mnist(split="test")
    x = x[:a.digits]
    cut = x.clone()
    cut[..., 14:] = 0
    with torch.no_grad():
        labels = [model.rule.logits(model.rollout(v, a.steps, torch.Generator().manual_seed(0))).argmax(1)
                  for v in (x, cut)]
    columns = torch.arange(28)
    for lo, hi in ((10, 14), (6, 10), (0, 6)):
        cells = (x[:, 0] > 0.1) & (columns >= lo) & (columns < hi)
        changed = (labels[0] != labels[1])[cells].float().mean().item()
        print(f"columns {lo}-{hi - 1} ({14 - hi + 1}-{14 - lo} from the cut): {100 * changed:.1f}% of alive cells "
              f"change their label")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate one model (one `deqnca cells eval` per part)")
    r.add_argument("--model", required=True, help="the name in the results' file names (article, equilibrium)")
    r.add_argument("--checkpoint", required=True, help="a checkpoint or a shipped name (cells/article)")
    r.add_argument("--parts", nargs="+", default=["all"], choices=("all", *PARTS))
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--shards", type=int, default=1, help="processes side by side for the parts full, long and "
                   "mutation (each --threads threads; their results merged into one file)")
    r.add_argument("--long-images", type=int, default=200)
    r.add_argument("--mutation-images", type=int, default=1000)
    r.add_argument("--no-compile", dest="compile", action="store_false", help="eager PyTorch (default: --compile)")
    t = sub.add_parser("table", help="the docs tables from results/cells/")
    t.add_argument("--models", nargs="+", default=["article", "consensus"])
    p = sub.add_parser("progress", help="a training run's held-out evaluations from its metrics.jsonl")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--every", type=int, default=0, help="only the evaluations at multiples of this step")
    sub.add_parser("pieces", help="test digits whose alive cells form several separate pieces")
    r = sub.add_parser("reach", help="how far a model's cells hear: labels changed by erasing half the digit")
    r.add_argument("checkpoint")
    r.add_argument("--digits", type=int, default=64)
    r.add_argument("--steps", type=int, default=100)
    a = ap.parse_args(argv)
    return {"run": run, "table": table, "progress": progress, "pieces": pieces, "reach": reach}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
