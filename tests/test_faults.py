"""A kill at any instant leaves a resumable run (docs/guarantees.md): each task's run is killed (SIGKILL,
through the DEQNCA_FAULT hook) mid-step, inside each step of a checkpoint write and inside the metrics
write; `--resume` then finishes it with weights identical to an uninterrupted run's, and metrics.jsonl
holds each record exactly once, in order."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from deqnca.engine.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow
TINY_MNIST = ["train", "--train-subset", "96", "--test-subset", "16", "--epochs", "2", "--batch-size", "32",
              "--set", "input_channels=4", "--set", "state_channels=8", "--set", 'solver_kw={"max_iter": 2}']
TINY_GROW = ["grow", "train", "--target", "small", "--variant", "regenerating", "--steps", "6", "--pool-size", "8",
             "--batch-size", "4", "--rollout-steps", "4", "6", "--log-every", "2"]
TINY_MAZE = ["maze", "train", "--model", "deq", "--width", "4", "--train-size", "5", "--train-count", "48",
             "--batch-size", "16", "--epochs", "2", "--set", "train_iters=2", "--val-count", "8"]
TIMING = {"elapsed_s", "wall_s", "seconds"}
# inside each write of a checkpoint (the tensor file's rename, the manifest's rename, the old file's removal),
# inside the metrics write, and mid-step at a random step
FAULTS = ["before-rename:last.json:2", "before-rename:*:3", "before-cleanup:*:1", "metrics:metrics.jsonl:2"]


def _run(args, out, fault=None, resume=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DEQNCA_FAULT", None)
    if fault:
        env["DEQNCA_FAULT"] = fault
    cmd = [sys.executable, "-m", "deqnca.cli", *args, "--checkpoint-every", "2", "--device", "cpu", "--json",
           "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _state(out):
    tensors, _ = read_checkpoint(out / "last")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return tensors, [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.parametrize("args", [TINY_MNIST, TINY_GROW, TINY_MAZE], ids=["mnist", "grow", "maze"])
def test_a_kill_at_any_instant_resumes_to_the_uninterrupted_run(tmp_path, args):
    if args[0] == "maze":
        args = args + ["--cache", str(tmp_path / "cache")]
    assert _run(args, tmp_path / "ref").returncode == 0
    ref_tensors, ref_records = _state(tmp_path / "ref")
    steps = [r["global_step"] for r in ref_records]
    assert steps == sorted(set(steps))
    # every write instant for MNIST; for the other tasks (the same engine and checkpoint code) three
    faults = FAULTS if args[0] == "train" else FAULTS[::2]
    for i, fault in enumerate(faults + [f"step:{random.Random(len(args)).randint(1, 5)}"]):
        out = tmp_path / f"run{i}"
        killed = _run(args, out, fault)
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-1500:])
        done = _run(args, out, resume=True)
        assert done.returncode == 0, (fault, done.stderr[-1500:])
        tensors, records = _state(out)
        assert records == ref_records, fault
        for k, v in ref_tensors.items():
            if k.startswith(("model.", "task.")):
                assert torch.equal(tensors[k], v), (fault, k)
        assert len(list(out.glob("last*.safetensors"))) == 1, fault       # no file left behind


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(tmp_path):
    import signal
    import time

    args = ["train", "--train-subset", "12800", "--test-subset", "16", "--epochs", "1", "--batch-size", "32",
            "--set", "input_channels=4", "--set", "state_channels=8", "--set", 'solver_kw={"max_iter": 4}']
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deqnca.cli", *args, "--device", "cpu", "--json", "--out", str(tmp_path / "run")]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "run" / "config.json").exists() and p.poll() is None:
        time.sleep(0.2)
    time.sleep(2)                                     # into the steps
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "continue with --resume" in err, err[-1000:]
    stopped = json.loads((tmp_path / "run" / "last.json").read_text())["progress"]["global_step"]
    assert 0 < stopped < 400
    assert subprocess.run(cmd + ["--resume"], env=env, capture_output=True).returncode == 0
    assert subprocess.run(cmd[:-1] + [str(tmp_path / "ref")], env=env, capture_output=True).returncode == 0
    a, b = read_checkpoint(tmp_path / "ref" / "last")[0], read_checkpoint(tmp_path / "run" / "last")[0]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
