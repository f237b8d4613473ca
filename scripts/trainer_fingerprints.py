"""Fingerprints of short fixed-seed runs of every trainer: SHA-256 of the final model tensors and the
metrics each run recorded (timings dropped). Two checkouts that train identically print identical
fingerprints on the same machine (CPU kernels differ between CPU models, so compare on one machine).

    python scripts/trainer_fingerprints.py --json-out /tmp/before.json
    python scripts/trainer_fingerprints.py --compare /tmp/before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MNIST = ["--train-subset", "192", "--test-subset", "100", "--batch-size", "32", "--seed", "0", "--device", "cpu"]
GROW = ["grow", "train", "--target", "small", "--variant", "regenerating", "--steps", "6", "--pool-size", "16",
        "--batch-size", "4", "--rollout-steps", "8", "12", "--seed", "1", "--log-every", "2", "--device", "cpu"]
MAZE = ["maze", "train", "--width", "8", "--train-size", "5", "--batch-size", "16", "--lr", "0.05",
        "--set", "train_iters=4", "--seed", "0", "--device", "cpu", "--train-count", "69", "--epochs", "2"]
CELLS = ["cells", "train", "--size", "14", "--train-images", "256", "--steps", "6", "--batch-size", "4",
         "--checkpoint-every", "3", "--log-every", "2", "--eval-every", "3", "--eval-images", "8", "--eval-marks",
         "[4, 8]", "--seed", "0", "--device", "cpu"]
RUNS = {
    "mnist-essay": ["train", "--preset", "essay", "--epochs", "2", *MNIST],
    "mnist-equilibrium": ["train", "--preset", "equilibrium", "--epochs", "1", *MNIST],
    "grow-bptt": [*GROW, "--trainer", "bptt"],
    "grow-implicit-window": [*GROW, "--trainer", "implicit", "--recipe", "window"],
    "maze-dt": [*MAZE, "--model", "dt"],
    "maze-deq": [*MAZE, "--model", "deq"],
    "cells-article": [*CELLS, "--model", "article", "--rollout-steps", "6", "--pool-size", "8", "--fresh", "1",
                      "--mutate", "1"],
    "cells-consensus": [*CELLS, "--model", "consensus", "--set", "solver_iter=20", "--set", "b_max_iter=10"],
}
TIMING = {"epoch_time_s", "elapsed_s", "wall_s", "seconds"}
# the one engine stamps every record with its step (the record is trimmed to the checkpoint on resume):
# compared without it, so fingerprints taken before the engine existed still compare
STAMPS = {"global_step"}


def weights_of(run: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(run.glob("last*.safetensors")) or sorted(run.glob("last/*.safetensors"))
    tensors = {}
    for f in files:
        if "pool" in f.name:
            continue
        tensors.update({k: v for k, v in load_file(str(f)).items() if k.startswith("model.")})
    return tensors


def fingerprint(name: str, args: list[str], workdir: Path) -> dict:
    out = workdir / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--cache", str(workdir / "mazes")] if args[0] == "maze" else []
    r = subprocess.run([sys.executable, "-m", "deqnca.cli", *args, *extra, "--out", str(out)], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-2000:]}")
    h = hashlib.sha256()
    tensors = weights_of(out)
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"weights_sha256": h.hexdigest(), "tensors": len(tensors), "metrics": metrics}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json-out")
    ap.add_argument("--compare", help="a JSON written earlier by --json-out")
    ap.add_argument("--only", nargs="*", default=list(RUNS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {name: fingerprint(name, RUNS[name], Path(tmp)) for name in a.only}
    for name, r in result.items():
        print(f"{name:22s} {r['weights_sha256'][:16]}  {len(r['metrics'])} metric records")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=1) + "\n")
    if a.compare:
        ref = json.loads(Path(a.compare).read_text())
        def strip(r):
            return r and {**r, "metrics": [{k: v for k, v in m.items() if k not in STAMPS} for m in r["metrics"]]}
        bad = [n for n in result if strip(ref.get(n)) != strip(result[n])]
        for n in bad:
            print(f"DIFFERS: {n}\n  before {json.dumps(ref.get(n))[:400]}\n  after  {json.dumps(result[n])[:400]}")
        print("identical" if not bad else f"{len(bad)} of {len(result)} differ")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
