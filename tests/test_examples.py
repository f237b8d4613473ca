"""The examples run: each, with --quick, in under 20 s on 2 CPU cores (one thread: the models are tiny
and a shared machine punishes a second thread), from a folder outside the repository."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
LIMIT_S = 20


def test_there_are_examples():
    names = {p.stem for p in EXAMPLES}
    assert {"evaluate_and_rollout", "train_your_own_rule", "grow_and_damage"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quickly(example, tmp_path, record_property):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(example), "--quick", "--out", str(tmp_path / "out")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    record_property("seconds", round(seconds, 1))
    print(f"{example.name}: {seconds:.1f} s\n{r.stdout}")
    assert any((tmp_path / "out").rglob("*.png")) or "last" in r.stdout
    assert seconds < LIMIT_S, f"{example.name} took {seconds:.1f} s"
