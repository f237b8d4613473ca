"""Write each shipped model's data record (`"data"` in its JSON; deqnca.data.provenance) from what it was
trained on: the vendored MNIST files (MNIST, cells and the CNN baseline), its target (grow: the target its
weights hold, named by its train_config) or its maze sets (regenerated from its train_config). The weights
are not touched; `--check` only compares.

    python scripts/record_shipped_data.py [--check]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from deqnca.core.configs import load_dataclass
from deqnca.core.resources import models_dir
from deqnca.data.provenance import idx_data
from deqnca.tasks import load
from deqnca.tasks.grow.targets import load_target, target_record
from deqnca.tasks.maze.config import MazeConfig
from deqnca.tasks.maze.task import load_mixed, maze_record


def grow_record(name: str, meta: dict) -> dict:
    model, _ = load(name)
    train = meta.get("train_config") or {}
    spec, pad = train.get("target", "lizard"), train.get("pad", 0)
    record = target_record(spec, pad, model.target)
    if not torch.equal(load_target(spec, pad=pad), model.target):
        record.pop("file_sha256", None)          # the file is not what it was trained on: only the tensor's hash
        print(f"{name}: its target differs from {spec}'s file now", file=sys.stderr)
    return record


def maze_data(meta: dict, cache: Path) -> dict:
    cfg = load_dataclass(MazeConfig, {k: v for k, v in (meta.get("train_config") or {}).items() if k != "cache"},
                         "maze train config")
    sizes = sorted({cfg.train_size, *cfg.train_sizes})
    train = [load_mixed(s, cfg.train_count, "train", cfg.generator, cache) for s in sizes]
    return maze_record(cfg, sizes, train, load_mixed(cfg.train_size, cfg.val_count, "test", cfg.generator, cache))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which records differ (exit 1 if any)")
    a = ap.parse_args()
    root = models_dir()
    mnist = idx_data()[1]
    differ = 0
    with tempfile.TemporaryDirectory() as cache:
        for path in sorted(root.rglob("*.json")):
            name = str(path.relative_to(root).with_suffix(""))
            meta = json.loads(path.read_text())
            kind = meta.get("kind")
            record = (mnist if kind in ("mnist", "cells", "cnn") else grow_record(name, meta) if kind == "grow"
                      else maze_data(meta, Path(cache)) if kind == "maze" else None)
            if record is None or meta.get("data") == record:
                continue
            differ += 1
            print(f"{name}: {record['name']} (sha256 {record['sha256'][:12]})")
            if not a.check:
                keys = list(meta)
                at = keys.index("kind") + 1 if "kind" in keys else 0
                meta = {**{k: meta[k] for k in keys[:at]}, "data": record,
                        **{k: meta[k] for k in keys[at:] if k != "data"}}
                path.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    return 1 if a.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
