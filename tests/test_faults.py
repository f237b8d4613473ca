"""Faults of real processes (docs/guarantees.md): a kill at any instant leaves a resumable run; Ctrl-C and
SIGTERM stop at a step boundary with a checkpoint; a run owns its folder (a second process is refused and
changes nothing); a real full disk is one line and keeps the previous checkpoint; the fault hook is inert
outside the test suite.

Each run is killed (SIGKILL, through the DEQNCA_TEST_FAULT hook) mid-step, inside each step of a checkpoint
write and inside the metrics write; `--resume` then finishes it with weights identical to an uninterrupted
run's, metrics.jsonl holds each record exactly once, in order, and nothing a kill left stays behind.

Commands run as real processes forked from one that imported torch and deqnca once (`launcher`, conftest.py);
the full-disk case runs `python -m deqnca.cli` in a private mount namespace."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deqnca
from deqnca.engine.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow
TINY_MNIST = ["train", "--train-subset", "96", "--test-subset", "16", "--epochs", "2", "--batch-size", "32",
              "--set", "input_channels=4", "--set", "state_channels=8", "--set", 'solver_kw={"max_iter": 2}']
TINY_GROW = ["grow", "train", "--target", "small", "--variant", "regenerating", "--steps", "6", "--pool-size", "8",
             "--batch-size", "4", "--rollout-steps", "4", "6", "--log-every", "2"]
TINY_MAZE = ["maze", "train", "--model", "deq", "--width", "4", "--train-size", "5", "--train-count", "48",
             "--batch-size", "16", "--epochs", "2", "--set", "train_iters=2", "--val-count", "8"]
TIMING = {"elapsed_s", "wall_s", "seconds"}
# inside each write of a checkpoint (the second checkpoint's manifest, its tensor file's rename, the run
# manifest's record of that file, the old tensor file's removal), inside the metrics write, and mid-step
FAULTS = ["before-rename:last.json:2", "before-rename:last.[0-9a-f]*.safetensors:2", "before-cleanup:*:1",
          "metrics:metrics.jsonl:2", "before-rename:.deqnca-files.json:3"]


def _env(fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DEQNCA_TEST_FAULT", None)
    if fault:
        env["DEQNCA_TEST_FAULT"] = fault
    return env


def _run(launcher, args, out, fault=None, resume=False):
    return launcher.run([*args, "--checkpoint-every", "2", "--device", "cpu", "--json", "--out", out]
                        + (["--resume"] if resume else []), _env(fault))


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out):
    tensors, _ = read_checkpoint(out / "last")
    return tensors, [{k: v for k, v in r.items() if k not in TIMING} for r in _records(out)]


def _error_line(err: str) -> str:
    """The one error line of a refused command (and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    return errors[0]


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("args", [TINY_MNIST, TINY_GROW, TINY_MAZE], ids=["mnist", "grow", "maze"])
def test_a_kill_at_any_instant_resumes_to_the_uninterrupted_run(tmp_path, launcher, args):
    if args[0] == "maze":
        args = args + ["--cache", str(tmp_path / "cache")]
    assert _run(launcher, args, tmp_path / "ref").returncode == 0
    ref_tensors, ref_records = _state(tmp_path / "ref")
    steps = [r["global_step"] for r in ref_records]
    assert steps == sorted(set(steps))
    # every write instant for MNIST; for the other tasks (the same engine and checkpoint code) three
    faults = FAULTS if args[0] == "train" else FAULTS[::2]
    for i, fault in enumerate(faults + [f"step:{random.Random(len(args)).randint(1, 5)}"]):
        out = tmp_path / f"run{i}"
        killed = _run(launcher, args, out, fault)
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-1500:])
        done = _run(launcher, args, out, resume=True)
        assert done.returncode == 0, (fault, done.stderr[-1500:])
        tensors, records = _state(out)
        assert records == ref_records, fault
        for k, v in ref_tensors.items():
            if k.startswith(("model.", "task.")):
                assert torch.equal(tensors[k], v), (fault, k)
        # nothing a kill left stays: one tensor file (the checkpoint's), no temporary or staging file
        left = sorted(p.name for p in out.iterdir())
        assert [n for n in left if n.endswith(".safetensors")] == [json.loads((out / "last.json").read_text())[
            "weights_file"]], (fault, left)
        assert not [n for n in left if n.endswith(".tmp")], (fault, left)


SIGNAL_RUN = ["train", "--train-subset", "3200", "--test-subset", "16", "--epochs", "1", "--batch-size", "32",
              "--set", "input_channels=4", "--set", "state_channels=8", "--set", 'solver_kw={"max_iter": 4}',
              "--checkpoint-every", "10", "--device", "cpu", "--json"]


def test_ctrl_c_and_sigterm_stop_at_a_step_boundary_and_resume_exactly(tmp_path, launcher):
    """SIGTERM (what batch schedulers send before SIGKILL) is taken like the first Ctrl-C: a checkpoint at
    the end of the step, exit code 143 (130 for Ctrl-C); --resume then ends where an uninterrupted run does.
    Regression: SIGTERM killed the run and saved nothing."""
    ref = launcher.start([*SIGNAL_RUN, "--out", tmp_path / "ref"])
    runs = {sig: launcher.start([*SIGNAL_RUN, "--out", tmp_path / sig.name]) for sig in (signal.SIGINT,
                                                                                          signal.SIGTERM)}
    for sig, p in runs.items():
        while not (tmp_path / sig.name / "last.json").exists() and p.poll() is None:
            time.sleep(0.02)                          # into the steps: the checkpoint of step 10 is there
        os.kill(p.pid, sig)
    for sig, p in runs.items():
        code, words = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated (SIGTERM)")}[sig]
        assert p.wait(120) == code and "continue with --resume" in p.stderr and words in p.stderr, p.stderr[-1000:]
        stopped = json.loads((tmp_path / sig.name / "last.json").read_text())["progress"]["global_step"]
        assert 10 < stopped < 100, (sig, stopped)          # after the checkpoint of step 10, before the end
    resumed = [launcher.start([*SIGNAL_RUN, "--out", tmp_path / sig.name, "--resume"]) for sig in runs]
    assert ref.wait() == 0 and all(p.wait() == 0 for p in resumed)
    a = read_checkpoint(tmp_path / "ref" / "last")[0]
    for sig in runs:
        b = read_checkpoint(tmp_path / sig.name / "last")[0]
        assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model.")), sig


# ---- a run owns its folder ----------------------------------------------------------------------------

OWN = ["train", "--train-subset", "96", "--test-subset", "16", "--batch-size", "32", "--set", "input_channels=4",
       "--set", "state_channels=8", "--set", "solver_kw.max_iter=2", "--device", "cpu", "--json"]


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_two_runs_started_together_on_one_folder_one_runs_the_other_exits_2(tmp_path, launcher, resume):
    """Regression: both passed the 'already holds a run' check (metrics epochs [1, 1, 2, 2]); two --resume
    both continued ([1, 2, 3, 3, 4, 4]). Each run trains 2 s (a time budget), so the two overlap."""
    out = tmp_path / "run"
    if resume:
        assert launcher.run([*OWN, "--epochs", "1", "--out", out]).returncode == 0
    argv = [*OWN, "--epochs", "100000", "--time-budget", "2", "--out", out] + (["--resume"] if resume else [])
    both = [launcher.start(argv), launcher.start(argv)]
    codes = sorted(p.wait() for p in both)
    assert codes == [0, 2], [(p.returncode, p.stderr[-800:]) for p in both]
    loser = next(p for p in both if p.returncode == 2)
    line = _error_line(loser.stderr)
    assert "is in use" in line and ".deqnca.lock" in line, line
    steps = [r["global_step"] for r in _records(out)]
    assert steps == sorted(set(steps)) and len(steps) > 1, steps             # no record twice
    record = json.loads((out / "last.json").read_text())
    assert record["progress"]["global_step"] == steps[-1]
    assert sorted(p.name for p in out.glob("*.safetensors")) == [record["weights_file"]]


def test_a_run_refused_because_its_folder_is_in_use_changes_no_byte(tmp_path, launcher):
    """The holder is stopped (SIGSTOP) after its first checkpoint, so the folder cannot change while a
    --resume and a fresh run into it are refused; both name the lock and the holder's process."""
    out = tmp_path / "run"
    holder = launcher.start([*OWN, "--epochs", "100000", "--time-budget", "3", "--out", out])
    while not (out / "last.json").exists() and holder.poll() is None:
        time.sleep(0.02)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        before = _files(out)
        refused = [launcher.start([*OWN, "--epochs", "100000", "--time-budget", "1", "--out", out, "--resume"]),
                   launcher.start([*OWN, "--epochs", "1", "--out", out]),
                   launcher.start([*OWN, "--epochs", "1", "--out", out, "--overwrite"])]
        for p in refused:
            assert p.wait(120) == 2, (p.returncode, p.stderr[-1500:])
            line = _error_line(p.stderr)
            assert "is in use" in line and ".deqnca.lock" in line and f"process {holder.pid}" in line, line
        assert _files(out) == before                                      # not a byte
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert holder.wait() == 0, holder.stderr[-1500:]
    steps = [r["global_step"] for r in _records(out)]
    assert steps == sorted(set(steps)), steps


# ---- a real full disk -----------------------------------------------------------------------------------

# runs inside a private mount namespace, with a small tmpfs mounted at argv[1]: one epoch, then the disk is
# filled but for 48 KiB (room for the run's small files, not for its 120 KiB tensor file), then --resume
FULL_DISK = r"""
import json, os, shutil, subprocess, sys
disk, keep, *train = sys.argv[1:]
run = os.path.join(disk, "run")
def deqnca(*extra):
    p = subprocess.run([sys.executable, "-m", "deqnca.cli", *train, "--out", run, *extra], capture_output=True,
                       text=True, timeout=300)
    return [p.returncode, p.stderr]
first = deqnca("--epochs", "1")
size = max(os.path.getsize(os.path.join(run, f)) for f in os.listdir(run) if f.endswith(".safetensors"))
st = os.statvfs(disk)
with open(os.path.join(disk, "filler"), "wb") as fh:
    fh.write(b"\0" * (st.f_bavail * st.f_frsize - 48 * 1024))
shutil.copytree(run, os.path.join(keep, "before"))
second = deqnca("--epochs", "2", "--resume")
shutil.copytree(run, os.path.join(keep, "after"))
json.dump({"first": first, "second": second, "tensor_bytes": size}, open(os.path.join(keep, "result.json"), "w"))
"""


def test_a_real_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """Regression: safetensors raises its own error on a full disk (not OSError), so a real full disk printed
    a traceback. Here the disk is a 4 MiB tmpfs in a private mount namespace, really full."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs in a private mount namespace")
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    (tmp_path / "full_disk.py").write_text(FULL_DISK)
    package = Path(deqnca.__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(package),
                                                                               os.environ.get("PYTHONPATH", "")])}
    train = ["train", "--train-subset", "64", "--test-subset", "16", "--batch-size", "32", "--preset", "essay",
             "--amp", "off", "--device", "cpu", "--json"]
    script = 'mount -t tmpfs -o size=4m tmpfs "$1" && shift && exec "$@"'
    p = subprocess.run([unshare, "-m", "sh", "-c", script, "sh", str(disk), sys.executable,
                        str(tmp_path / "full_disk.py"), str(disk), str(keep), *train],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((keep / "result.json").read_text())
    assert result["first"][0] == 0, result["first"][1][-2000:]
    assert result["tensor_bytes"] > 64 * 1024                  # more than the room left: the disk fills up
    code, err = result["second"]
    assert code == 1, err[-2000:]
    line = _error_line(err)
    assert "No space left on device" in line and "the disk is full" in line and ".tmp" not in line, line
    before, after = _files(keep / "before"), _files(keep / "after")
    record = json.loads(before["last.json"])
    for name in ("last.json", record["weights_file"]):
        assert after[name] == before[name], name                  # the previous checkpoint, byte for byte
    assert not [n for n in after if n.endswith(".tmp") or n == "last.staging.safetensors"], sorted(after)
    model, meta = deqnca.load(keep / "after" / "last")            # and it loads
    assert meta["progress"]["global_step"] == record["progress"]["global_step"] == 2


# ---- the fault hook --------------------------------------------------------------------------------------

def test_the_fault_hook_is_inert_outside_the_test_suite():
    """Regression: DEQNCA_FAULT killed any process that had it set. The hook now has a name of its own and
    acts only where the test suite runs (PYTEST_CURRENT_TEST, which pytest sets, is set too)."""
    code = "from deqnca.core.fileio import fault_point; fault_point('step', '1'); print('alive')"
    package = Path(deqnca.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])
    for name in ("DEQNCA_FAULT", "DEQNCA_TEST_FAULT"):
        p = subprocess.run([sys.executable, "-c", code], env={**env, name: "step:1"}, capture_output=True, text=True)
        assert p.returncode == 0 and "alive" in p.stdout, (name, p.returncode, p.stderr[-800:])
    live = {**env, "DEQNCA_TEST_FAULT": "step:1", "PYTEST_CURRENT_TEST": os.environ["PYTEST_CURRENT_TEST"]}
    assert subprocess.run([sys.executable, "-c", code], env=live, capture_output=True).returncode == -9
