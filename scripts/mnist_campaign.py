"""Every MNIST training run behind docs/mnist.md, launched in parallel on one machine.

    python scripts/mnist_campaign.py --out runs/campaign --device cuda --deadline 480
    python scripts/mnist_campaign.py --out /tmp/dry --device cpu --dry   # smoke test

Runs are independent `deqnca train` processes (small models leave a GPU mostly idle, so several
share it well). A packer tars the run folders into <out>/runs.tar.gz every 30 s, so whatever has
finished survives a deadline. Each run's metrics.jsonl and checkpoints are in its folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ESSAY = ["--preset", "essay"]
BROYDEN = ["--preset", "essay-broyden"]
EQUI = ["--preset", "equilibrium"]
RUNS = {
    # the essay-faithful model (shipped): 3 seeds
    **{f"essay-s{s}": ESSAY + ["--seed", str(s)] for s in range(3)},
    # the essay's Broyden solver kept, and ablations of it (seed 0)
    **{f"essay-broyden-s{s}": BROYDEN + ["--seed", str(s)] for s in range(3)},
    "essay-broyden-grad1-s0": BROYDEN + ["--seed", "0", "--set", "gradient_kw.k=1"],
    "essay-broyden-torchinit-s0": BROYDEN + ["--seed", "0", "--set", "rule_kw.state_init_scale=1.0"],
    "essay-broyden-relstop-s0": BROYDEN + ["--seed", "0", "--set", "solver_kw.stop_mode=rel"],
    # the equilibrium-faithful model: 3 seeds
    **{f"equilibrium-s{s}": EQUI + ["--seed", str(s)] for s in range(3)},
    "equilibrium-b128-s0": EQUI + ["--seed", "0", "--batch-size", "128"],
}


def pack(out: Path, dest: Path):
    tmp = dest.with_name("." + dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for run in sorted(p for p in (out / "runs").glob("*") if p.is_dir()):
            for f in run.iterdir():
                if f.suffix in (".json", ".jsonl", ".safetensors", ".log"):
                    tar.add(f, arcname=f"{run.name}/{f.name}")
    os.replace(tmp, dest)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=480, help="seconds until remaining runs are stopped")
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--pack", help="tarball to keep updated (default <out>/runs.tar.gz)")
    ap.add_argument("--dry", action="store_true", help="1 epoch on 256 images: checks the plumbing")
    args = ap.parse_args()
    out = Path(args.out)
    dest = Path(args.pack) if args.pack else out / "runs.tar.gz"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name in names:
        cmd = [sys.executable, "-m", "deqnca.cli", "train", *RUNS[name], "--device", args.device,
               "--out", str(out / "runs" / name), "--json"]
        if args.dry:
            cmd += ["--epochs", "1", "--train-subset", "256", "--test-subset", "200"]
        (out / "runs" / name).mkdir(parents=True, exist_ok=True)
        log = open(out / "runs" / name / "train.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    t0, last_pack = time.time(), 0.0
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(2)
        if time.time() - last_pack > 30:
            pack(out, dest)
            last_pack = time.time()
        if time.time() - t0 > args.deadline:
            for _name, (p, _) in procs.items():
                if p.poll() is None:
                    p.send_signal(2)          # SIGINT: the trainer saves a usable checkpoint
            time.sleep(10)
            break
    for _name, (_p, log) in procs.items():
        log.close()
    pack(out, dest)
    summary = {}
    for name in names:
        m = out / "runs" / name / "metrics.jsonl"
        rows = [json.loads(l) for l in m.read_text().splitlines()] if m.exists() else []
        summary[name] = {"returncode": procs[name][0].returncode, "epochs": len(rows),
                         "test_acc": rows[-1]["test_acc"] if rows else None,
                         "rel_median": rows[-1]["test_rel_median"] if rows else None,
                         "elapsed_s": rows[-1]["elapsed_s"] if rows else None}
        print(name, summary[name])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    dest.with_name("summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
