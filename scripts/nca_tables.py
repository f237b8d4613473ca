"""Markdown tables for docs/nca.md from the JSON written by nca_measure.py and cnn_baseline.py.

    python scripts/nca_tables.py results/nca results/nca-padded
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(v):
    return f"{100 * v:.1f}%"


def crops_table(rows):
    """rows: [(label, crops dict)]"""
    fr = rows[0][1]["fractions"]
    out = ["| model | input | anchor | " + " | ".join(f"{int(100 * f)}% visible" for f in fr) + " |",
           "|---|---|---|" + "---|" * len(fr)]
    for label, c in rows:
        for anchor, accs in c["accuracy"].items():
            out.append(f"| {label} | {c.get('mode', 'own-size')}, n={c['n']} | {anchor} | "
                       + " | ".join(pct(a) for a in accs) + " |")
    return "\n".join(out)


def steps_table(rows, marks=(0, 4, 8, 16, 24, 32, 48, 64, 100, 160)):
    out = ["| model | n | " + " | ".join(f"t={t}" for t in marks) + " |", "|---|---|" + "---|" * len(marks)]
    for label, s in rows:
        acc, rel = s["accuracy"], s["rel_median"] + [float("nan")]
        out.append(f"| {label} accuracy | {s['n']} | " + " | ".join(pct(acc[t]) if t < len(acc) else "" for t in marks)
                   + " |")
        out.append(f"| {label} median rel. residual | | " + " | ".join(f"{rel[t]:.1e}" if t < len(rel) - 1 else ""
                                                                    for t in marks) + " |")
        out.append(f"| {label} share ≤ 1e-3 | | " + " | ".join(pct(s["frac_below_1e-3"][t]) if t < len(acc) - 1 else ""
                                                        for t in marks) + " |")
    return "\n".join(out)


def solvers_table(rows):
    out = ["| model | solver | f-evaluations | accuracy | median rel. residual | Broyden fallbacks |",
           "|---|---|---|---|---|---|"]
    for label, solvers in rows:
        for name, rs in solvers.items():
            for r in rs:
                out.append(f"| {label} | {name} | {r['budget']} | {pct(r['accuracy'])} | {r['rel_median']:.1e} | "
                           f"{r['fallback']} |")
    return "\n".join(out)


def panorama_table(rows):
    out = ["| model | canvas | digits per canvas | window | digits scored | accuracy per digit |",
           "|---|---|---|---|---|---|"]
    for label, ps in rows:
        for p in ps:
            out.append(f"| {label} | {p['size']}×{p['size']} | {p['per_canvas']} | {p['window']} | {p['digits']} | "
                       f"{pct(p['accuracy'])} |")
    return "\n".join(out)


def main():
    recs = []
    for d in sys.argv[1:] or ["results/nca"]:
        for f in sorted(Path(d).glob("*.json")):
            recs.append((f, json.loads(f.read_text())))
    crops = []
    for f, r in recs:
        name = Path(r.get("model", f.stem)).name
        if "crops" in r and "model" in r:
            crops.append((name, r["crops"]))
        if "crops_padded" in r:
            crops.append((name, r["crops_padded"]))
        if "parameters" in r and "crops" in r and "model" not in r:
            label = f"small CNN ({r['parameters']} params, {r['test_acc']:.2%} full)"
            crops.append((label, {**r["crops"], "mode": "padded"}))
    if crops:
        print(crops_table(crops), "\n")
    steps = [(Path(r["model"]).name, r["steps"]) for _, r in recs if "steps" in r]
    if steps:
        print(steps_table(steps), "\n")
    sol = [(Path(r["model"]).name, r["solvers"]) for _, r in recs if "solvers" in r]
    if sol:
        print(solvers_table(sol), "\n")
    pan = [(Path(r["model"]).name, r["panorama"]) for _, r in recs if "panorama" in r]
    if pan:
        print(panorama_table(pan))


if __name__ == "__main__":
    main()
