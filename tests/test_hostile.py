"""Hostile inputs (docs/guarantees.md): crafted data files, checkpoints, config files, command-line values,
output paths and maze caches each give one line on stderr and the documented exit code (1 bad input,
2 usage), no traceback, no hang, and nothing written; crafted inputs under 2 MB stay under 500 MB of
memory. Then the regression tests of five problems of the layout before the redesign: each fails on
commit b034da6 (where `deqnca.train.checkpoint` and `deqnca.train.loop` lived) and passes now; they use
only the command line, so they run against either code base.

Most cases run in this process (`deqnca.cli.main` with capsys, under a deadline); the four that measure
memory run in a subprocess with a timeout (marked slow: `make test-fast` leaves them out).
"""
import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deqnca
import deqnca.core.resources
from deqnca.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODELS = deqnca.core.resources.models_dir()
ESSAY = MODELS / "mnist-essay"
MAX_RSS_MB = 500                      # peak memory of a command given a crafted input under 2 MB


# ---- helpers -------------------------------------------------------------------------------------

class Hung(BaseException):
    """A command ran past its deadline (nothing in the program catches it)."""


def run(argv, capsys, deadline: int = 120):
    """(exit code, stderr) of the command line `argv`, run in this process; a hang fails the test."""
    def hung(*_):
        raise Hung(f"{' '.join(map(str, argv))} still running after {deadline} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(deadline)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    except Hung as e:
        pytest.fail(str(e))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return rc, capsys.readouterr().err


def assert_error(rc, err, code, *words):
    """Exit code `code`, no traceback, exactly one error line (the last one), holding every one of `words`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


# the peak is read from /proc/self/status (VmHWM, this process's own high-water mark in KiB): getrusage's
# ru_maxrss keeps the parent's peak across fork and exec, so under a large pytest process it reports that
CHILD = """
import resource, sys
from deqnca.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
try:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
open(sys.argv[1], "w").write(str(peak))
sys.exit(rc)
"""


def run_child(argv, tmp_path, timeout=120):
    """(exit code, stderr, peak resident memory in MB) of the command line run in a fresh process."""
    rss = tmp_path / "maxrss"
    package = Path(deqnca.__file__).resolve().parents[1]          # the deqnca under test, old or new
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
    env.pop("DEQNCA_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", CHILD, str(rss), *map(str, argv)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stderr, (int(rss.read_text()) / 1024 if rss.exists() else None)


def idx_bytes(arr) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_split(folder: Path, split: str, n: int, seed: int = 0) -> Path:
    """An MNIST-layout split of `n` random images and labels 0..9 as raw IDX files."""
    rng = np.random.default_rng(seed)
    stem = {"train": "train", "test": "t10k"}[split]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 28, 28))))
    (folder / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 10, n)))
    return folder


def craft(tmp_path, source: Path, name: str = "ck", tensors=None, meta=None) -> Path:
    """A copy of checkpoint `source` as `tmp_path/name`, its tensors changed by `tensors(dict)` and its
    JSON record by `meta(dict)` (the recorded hash kept right, so only the change itself is wrong)."""
    from safetensors.torch import load_file, save_file

    record = json.loads(source.with_name(source.name + ".json").read_text())
    st = tmp_path / f"{name}.safetensors"
    weights = load_file(str(source.parent / record["weights_file"]))
    if tensors is not None:
        tensors(weights)
    save_file(weights, str(st), metadata={"format": "deqnca-1"})
    record.update(weights_file=st.name, weights_sha256=hashlib.sha256(st.read_bytes()).hexdigest())
    if meta is not None:
        meta(record)
    (tmp_path / f"{name}.json").write_text(json.dumps(record))
    return tmp_path / name


def listing(folder: Path) -> dict:
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these cases are tiny, and on a shared machine two threads of tiny convolutions wait on each
    other (300 steps of a 4x4 rollout: 0.06 s on one thread, 17 s on two under load)."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"          # the commands' own thread set-up keeps it
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """64 training and 16 test images (random, MNIST layout) for training runs of a few seconds."""
    d = tmp_path_factory.mktemp("tiny-mnist")
    write_split(d, "train", 64)
    return write_split(d, "test", 16, seed=1)


def tiny_train(out, data, epochs=2, *extra):
    """A two-step-per-epoch MNIST run of a 1.5k-parameter model (the flags exist in the old layout too)."""
    return ["train", "--data-dir", data, "--no-verify", "--epochs", epochs, "--batch-size", "32",
            "--set", "input_channels=4", "--set", "state_channels=8", "--set", "solver_kw.max_iter=2",
            "--device", "cpu", "--json", "--out", out, *extra]


# ---- crafted IDX files ---------------------------------------------------------------------------

def _test_split_with(tmp_path, images=None, labels=None):
    d = write_split(tmp_path / "data", "test", 16)
    if images is not None:
        (d / "t10k-images-idx3-ubyte").write_bytes(images)
    if labels is not None:
        (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return d


@pytest.mark.parametrize("case", ["wrong magic", "truncated", "trailing", "labels out of range", "rank",
                                  "huge dims"])
def test_crafted_idx_files_are_one_line_errors(tmp_path, capsys, case):
    good = idx_bytes(np.zeros((16, 28, 28)))
    data = {"wrong magic": dict(images=b"\x01\x02" + good[2:]),
            "truncated": dict(images=good[:-100]),
            "trailing": dict(images=good + b"\x00" * 7),
            "labels out of range": dict(labels=idx_bytes([0, 1, 2, 12] + [3] * 12)),
            "rank": dict(images=bytes([0, 0, 8, 9])),
            "huge dims": dict(images=bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 28, 28) + b"\x00" * 64),
            }[case]
    words = {"wrong magic": ["t10k-images", "bad magic"], "truncated": ["truncated"],
             "trailing": ["7 trailing bytes"], "labels out of range": ["t10k-labels", "label 12 at position 3"],
             "rank": ["rank 9"], "huge dims": ["4294967295 x 28 x 28", "MiB"]}[case]
    d = _test_split_with(tmp_path, **data)
    rc, err = run(["eval", ESSAY, "--data-dir", d, "--device", "cpu", "--limit", "2"], capsys)
    assert_error(rc, err, 1, *words)


def test_labels_out_of_range_stop_training_before_it_starts(tmp_path, capsys, tiny_data):
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes([255] + [1] * 63))
    rc, err = run(tiny_train(tmp_path / "run", d, 1), capsys)
    assert_error(rc, err, 1, "train-labels", "label 255 at position 0")
    assert not (tmp_path / "run").exists()


def _gzip_bomb(path: Path, header: bytes, zeros_mb: int) -> Path:
    """`header` followed by `zeros_mb` MB of zeros, as a multi-member gzip file of about zeros_mb KB."""
    member = gzip.compress(b"\x00" * (10 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(zeros_mb // 10):
            fh.write(member)
    return path


@pytest.mark.slow                      # a subprocess, to measure its memory
@pytest.mark.parametrize("declared", ["mnist", "huge"])
def test_a_gzip_bomb_is_refused_in_bounded_memory(tmp_path, declared):
    d = write_split(tmp_path / "data", "test", 16)
    (d / "t10k-images-idx3-ubyte").unlink()
    dims = (10000, 28, 28) if declared == "mnist" else (2**31, 28, 28)
    bomb = _gzip_bomb(d / "t10k-images-idx3-ubyte.gz", bytes([0, 0, 8, 3]) + struct.pack(">3I", *dims), 1200)
    assert bomb.stat().st_size < 2 << 20                       # 1.2 MB that inflates to 1.2 GB
    rc, err, rss = run_child(["eval", ESSAY, "--data-dir", d, "--device", "cpu", "--limit", "2"], tmp_path)
    assert_error(rc, err, 1, "t10k-images-idx3-ubyte.gz", "trailing bytes" if declared == "mnist" else "MiB")
    print(f"peak memory {rss:.0f} MB")
    assert rss < MAX_RSS_MB, f"peak memory {rss:.0f} MB"


# ---- crafted checkpoints -------------------------------------------------------------------------

def _nan(tensors):
    k = next(k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point() and v.dim() > 1)
    tensors[k][(0,) * tensors[k].dim()] = float("nan")


NON_FINITE = {
    "eval": (ESSAY, lambda ck, out: ["eval", ck, "--limit", "2"]),
    "rollout": (ESSAY, lambda ck, out: ["rollout", ck, "--out", out, "--steps", "2"]),
    "grow show": (MODELS / "grow" / "lizard-bptt", lambda ck, out: ["grow", "show", ck, "--out", out, "--steps", "2"]),
    "maze eval": (MODELS / "maze" / "dt", lambda ck, out: ["maze", "eval", ck, "--out", out, "--sizes", "9",
                                                           "--limit-per-size", "2", "--cache", out.parent / "c"]),
}


@pytest.mark.parametrize("command", list(NON_FINITE))
def test_checkpoint_with_non_finite_weights_is_refused_by_every_command(tmp_path, capsys, command):
    """Regression (4): checkpoint contents are validated on load (b034da6 evaluated NaN weights)."""
    source, argv = NON_FINITE[command]
    ck = craft(tmp_path, source, tensors=_nan)
    out = tmp_path / "out"
    rc, err = run([*argv(ck, out), "--device", "cpu"], capsys)
    assert_error(rc, err, 1, "NaN or inf")
    assert not out.exists()                                    # nothing written


def test_checkpoint_with_integer_weights_is_refused(tmp_path, capsys):
    """Regression (4): b034da6 cast integer weights to float silently."""
    import torch

    def ints(t):
        t["model.K1.weight"] = (t["model.K1.weight"] * 100).to(torch.int32)
    rc, err = run(["eval", craft(tmp_path, ESSAY, tensors=ints), "--limit", "2", "--device", "cpu"], capsys)
    assert_error(rc, err, 1, "K1.weight", "torch.int32")


@pytest.mark.slow                      # a subprocess, to measure its memory and stop a hang
def test_a_million_channels_are_refused_before_allocating(tmp_path):
    """Regression (4): the model config is checked before anything is built (b034da6 tried to allocate)."""
    ck = craft(tmp_path, ESSAY, meta=lambda m: m["model_config"].update(state_channels=10**6))
    rc, err, rss = run_child(["eval", ck, "--limit", "2", "--device", "cpu"], tmp_path, timeout=120)
    assert_error(rc, err, 1, "state_channels = 1000000", "out of range")
    print(f"peak memory {rss:.0f} MB")
    assert rss < MAX_RSS_MB, f"peak memory {rss:.0f} MB"


@pytest.mark.slow                      # a subprocess, to measure its memory and stop a hang
def test_a_billion_solver_iterations_are_refused_not_run(tmp_path):
    """Regression (4): b034da6 ran them (for days)."""
    ck = craft(tmp_path, ESSAY, meta=lambda m: m["model_config"]["solver_kw"].update(max_iter=10**9))
    try:
        rc, err, rss = run_child(["eval", ck, "--limit", "1", "--device", "cpu"], tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a checkpoint asking for 10^9 solver iterations was run, not refused")
    assert_error(rc, err, 1, "max_iter = 1000000000 iterations")
    assert rss < MAX_RSS_MB


CRAFTED = {
    "weights_file with a folder": (lambda m: m.update(weights_file="sub/ck.safetensors"), "not a file name"),
    "weights_file absolute": (lambda m: m.update(weights_file="/etc/passwd"), "not a file name"),
    "weights_file upwards": (lambda m: m.update(weights_file=".."), "not a file name"),
    "model_config a list": (lambda m: m.update(model_config=[1, 2]), "'model_config' is a list"),
    "history an object": (lambda m: m.update(history={"epoch": 1}), "'history' is a dict"),
    "metrics a list": (lambda m: m.update(metrics=[0.9]), "'metrics' is a list"),
    "solver_kw a list": (lambda m: m["model_config"].update(solver_kw=[40]), "model config is not usable"),
    "unknown model key": (lambda m: m["model_config"].update(colour="red"), "unknown model config keys"),
    "hidden infinite": (lambda m: m["model_config"].update(hidden=float("inf")), "hidden is inf"),
    "record a list": (None, "not a checkpoint record"),
    "deeply nested": (None, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoint_records_are_one_line_errors(tmp_path, capsys, case):
    change, words = CRAFTED[case]
    ck = craft(tmp_path, ESSAY, meta=change)
    if case.startswith("weights_file"):        # the tensors elsewhere than beside the record
        (tmp_path / "sub").mkdir()
        (tmp_path / "ck.safetensors").rename(tmp_path / "sub" / "ck.safetensors")
    if case == "record a list":
        (tmp_path / "ck.json").write_text("[1, 2, 3]")
    if case == "deeply nested":
        (tmp_path / "ck.json").write_text("[" * 200_000 + "]" * 200_000)
    rc, err = run(["eval", ck, "--limit", "2", "--device", "cpu"], capsys)
    assert_error(rc, err, 1, words)


LIZARD = MODELS / "grow" / "lizard-bptt"


@pytest.mark.parametrize("argv, words", [
    (["grow", "show", ESSAY, "--out", "OUT"], "a 'mnist' checkpoint, not a 'grow' one"),
    (["maze", "show", ESSAY, "--size", "9", "--out", "OUT"], "a 'mnist' checkpoint, not a 'maze' one"),
    (["maze", "eval", ESSAY, "--sizes", "9", "--out", "OUT", "--cache", "CACHE"], "not a 'maze' one"),
    (["eval", LIZARD, "--limit", "2"], "'grow' models are measured by their own commands"),
    (["rollout", LIZARD, "--out", "OUT"], "a 'grow' checkpoint, not a 'mnist' one"),
], ids=["grow-show-mnist", "maze-show-mnist", "maze-eval-mnist", "eval-grow", "rollout-grow"])
def test_a_checkpoint_of_the_wrong_kind_is_a_one_line_error(tmp_path, capsys, argv, words):
    places = {"OUT": tmp_path / "out", "CACHE": tmp_path / "cache"}
    rc, err = run([places.get(a, a) if isinstance(a, str) else a for a in argv] + ["--device", "cpu"], capsys)
    assert_error(rc, err, 1, words)
    assert not list(tmp_path.iterdir())                       # nothing written


def test_a_grow_checkpoint_asking_for_a_billion_steps_is_refused(tmp_path, capsys):
    ck = craft(tmp_path, LIZARD, meta=lambda m: m["train_config"].update(max_steps=10**9))
    rc, err = run(["grow", "show", ck, "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert_error(rc, err, 1, "max_steps", "out of range")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["no progress", "global_step a string", "optimizer of another model"])
def test_resuming_a_run_whose_record_is_malformed_is_a_one_line_error(tmp_path, capsys, tiny_data, change):
    out = tmp_path / "run"
    assert run(tiny_train(out, tiny_data, 1), capsys)[0] == 0
    record = json.loads((out / "last.json").read_text())
    if change == "no progress":
        del record["progress"]
    elif change == "global_step a string":
        record["progress"]["global_step"] = "4"
    else:
        record["optimizer"]["param_groups"] = [{"lr": 0.1}]
    (out / "last.json").write_text(json.dumps(record))
    before = listing(out)
    rc, err = run(tiny_train(out, tiny_data, 2, "--resume"), capsys)
    assert_error(rc, err, 1, "last")
    assert listing(out) == before


# ---- config files and command-line values --------------------------------------------------------

@pytest.mark.parametrize("config, words", [
    ({"train": {"epochs": "ten"}}, "expected int"),
    ({"train": {"epochz": 1}}, "unknown train config keys ['epochz']"),
    ({"train": [1, 2]}, "'train' must be a JSON object"),
    ({"model": "essay"}, "'model' must be a JSON object"),
    ({"optimizer": {}}, "unknown sections"),
    ({"train": {"lr": float("nan")}}, "not a finite number"),
    ({"train": {"batch_size": -8}}, "out of range"),
    ({"model": {"state_channels": 10**6}}, "out of range"),
    ({"model": {"solver_kw": "fast"}}, "expected dict"),
    ("{ not json", "not a readable JSON file"),
], ids=lambda v: None)
def test_config_files_with_wrong_types_or_keys_are_usage_errors(tmp_path, capsys, config, words):
    f = tmp_path / "config.json"
    f.write_text(config if isinstance(config, str) else json.dumps(config))
    rc, err = run(["train", "--config", f, "--out", tmp_path / "run", "--device", "cpu"], capsys)
    assert_error(rc, err, 2, words)
    assert not (tmp_path / "run").exists()


BAD_VALUES = [
    ["train", "--epochs", "-3"], ["train", "--batch-size", "-8"], ["train", "--lr", "nan"],
    ["train", "--lr", "-0.1"], ["train", "--momentum", "2"], ["train", "--seed", "-1"], ["train", "--epochs", "2.5"],
    ["train", "--set", "epochs=0"], ["train", "--set", "hidden=-1"], ["train", "--set", "noise_std=-1"],
    ["eval", "--max-iter", "-5"], ["eval", "--max-iter", "1000000000"], ["eval", "--limit", "-5"],
    ["eval", "--tol", "-1"], ["eval", "--tol", "nan"], ["eval", "--tol", "inf"],
    ["rollout", "--steps", "0"], ["rollout", "--steps", "100001"], ["rollout", "--index", "-1"],
    ["demo", "--seed", "x"],
    ["grow", "train", "--steps", "0"], ["grow", "train", "--pool-size", "0"],
    ["grow", "train", "--solver-iter", "10000000"],
    ["grow", "train", "--restore-fraction", "1.5"], ["grow", "train", "--rollout-steps", "0", "5"],
    ["grow", "show", "ck", "--steps", "0"], ["grow", "show", "ck", "--steps", "10000000"],
    ["grow", "measure", "ck", "--samples", "0"], ["grow", "measure", "ck", "--horizon", "1000000"],
    ["grow", "measure", "ck", "--threshold", "-1"],
    ["maze", "generate", "--count", "0"], ["maze", "generate", "--count", "-5"], ["maze", "generate", "--sizes", "8"],
    ["maze", "generate", "--sizes", "1000001"], ["maze", "generate", "--seed", "-2"],
    ["maze", "train", "--model", "dt", "--width", "0"], ["maze", "train", "--model", "dt", "--train-size", "8"],
    ["maze", "train", "--model", "dt", "--train-count", "0"], ["maze", "train", "--model", "dt", "--alpha", "-1"],
    ["maze", "eval", "ck", "--aa-count", "-1"], ["maze", "eval", "ck", "--max-iters", "9=-3"],
    ["maze", "eval", "ck", "--limit-per-size", "abc"], ["maze", "eval", "ck", "--sizes", "4"],
    ["maze", "show", "ck", "--index", "-1"], ["maze", "show", "ck", "--index", "5000"],
    ["maze", "show", "ck", "--size", "2"], ["maze", "show", "ck", "--max-iters", "0"],
]


@pytest.mark.parametrize("argv", BAD_VALUES, ids=" ".join)
def test_bad_numeric_values_are_one_line_usage_errors(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)                 # where the commands' default outputs would go
    rc, err = run(argv, capsys)
    assert_error(rc, err, 2)
    assert not list(tmp_path.iterdir())         # nothing written


def test_an_image_index_past_the_test_set_is_a_usage_error(tmp_path, capsys):
    rc, err = run(["rollout", "--index", "10000", "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert_error(rc, err, 2, "--index 10000", "0..9999")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_wherever_it_is_given(tmp_path, capsys, monkeypatch):
    from deqnca.engine.checkpoint import CheckpointError

    ck = craft(tmp_path, ESSAY, meta=lambda m: m["model_config"].update(hidden=10**6))
    for argv in (["--debug", "eval", ck], ["eval", ck, "--debug"]):
        with pytest.raises(CheckpointError, match="hidden = 1000000"):
            main([str(a) for a in argv] + ["--device", "cpu"])
    monkeypatch.setenv("DEQNCA_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["eval", str(ck), "--device", "cpu"])


# ---- output paths --------------------------------------------------------------------------------

def test_an_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys, tiny_data):
    f = tmp_path / "file"
    f.write_text("keep me")
    for argv in (["rollout", "--steps", "2", "--out", f], ["rollout", "--steps", "2", "--out", f / "sub"],
                 tiny_train(f, tiny_data, 1), ["grow", "show", LIZARD, "--out", f],
                 ["maze", "show", MODELS / "maze" / "dt", "--out", f, "--size", "9"],
                 ["export", ESSAY, f / "model"]):
        rc, err = run([*argv, "--device", "cpu"] if argv[0] != "export" else argv, capsys)
        assert_error(rc, err, 1, "is a file", "choose another")
    assert f.read_text() == "keep me"


def test_a_read_only_output_folder_is_a_one_line_error(tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes (the file case covers it)")
        rc, err = run(["rollout", "--steps", "2", "--out", d / "sub", "--device", "cpu"], capsys)
        assert_error(rc, err, 1, "not writable", "choose another --out")
    finally:
        d.chmod(0o700)


def test_a_full_disk_during_a_checkpoint_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, capsys,
                                                                                         tiny_data, monkeypatch):
    import deqnca.engine.checkpoint as checkpoint

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 100)                     # a part of the file got written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))     # as a write() raises it: no file name
    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    out = tmp_path / "run"
    rc, err = run(tiny_train(out, tiny_data, 1), capsys)
    line = assert_error(rc, err, 1, "last.staging.safetensors: No space left on device", "the disk is full")
    assert ".tmp" not in line                                     # the file being written, not its temporary
    left = sorted(p.name for p in out.iterdir())
    assert left == [".deqnca-files.json", ".deqnca.lock", "config.json", "metrics.jsonl"], left   # no tensors,
    json.loads((out / ".deqnca-files.json").read_text())          # no checkpoint manifest
    json.loads((out / "config.json").read_text())


# ---- maze caches ---------------------------------------------------------------------------------

def test_a_maze_cache_with_right_metadata_and_corrupt_layouts_is_regenerated_not_scored(tmp_path, capsys):
    from deqnca.tasks.maze import generate as mazes

    cache = tmp_path / "cache"
    assert run(["maze", "generate", "--sizes", "9", "--count", "6", "--cache", cache], capsys)[0] == 0
    path = mazes.cache_path(cache, "test", 9, 0)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    entries["layouts"] = entries["layouts"].copy()
    entries["layouts"][2] = entries["layouts"][3]                 # a valid-looking maze, in the wrong place
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **entries)                        # metadata and stored hash unchanged
    with pytest.warns(UserWarning, match="do not match their hash"):
        layouts = mazes.load_set(9, 6, "test", cache=cache)
    assert np.array_equal(layouts, mazes.generate_set(9, 6, "test"))
    with np.load(path) as f:                                       # and the file is whole again
        assert np.array_equal(f["layouts"], layouts) and str(f["sha256"]) == mazes.layouts_digest(layouts)


# ---- long rollouts keep bounded memory ----------------------------------------------------------

def test_rollouts_keep_at_most_200_frames_however_many_steps():
    import torch

    from deqnca.core.nca import even_frames, rollout
    from deqnca.tasks.grow.replay import replay
    from deqnca.tasks.grow.rule import GrowingConfig, GrowingNCARule
    from deqnca.tasks.mnist.model import EquilibriumModel

    frames = even_frames(100_000)
    assert len(frames) == 200 and frames[0] == 0 and frames[-1] == 100_000 and frames == sorted(set(frames))
    assert even_frames(64) == list(range(65))
    steps = 300
    model = EquilibriumModel({"rule": "residual_tanh", "input_channels": 2, "state_channels": 3, "hidden": 4})
    r = rollout(model, torch.rand(1, 1, 4, 4), steps, frames=even_frames(steps))
    assert r.states.shape[1] == 200 and r.frame_steps == even_frames(steps)
    assert r.rel_residual.shape == (1, steps) and r.probs.shape == (1, steps + 1, 10)
    rule = GrowingNCARule(GrowingConfig(channels=4, hidden=8))
    z, kept = replay(rule, rule.seed(1, 4, 4), steps, seed=0, keep_frames=True, frames=even_frames(steps))
    assert kept.shape[0] == 200 and torch.equal(kept[-1], z)


# ---- regression tests: each fails on b034da6 -----------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL at that instant: nothing in the program catches it (tests/test_faults.py kills
    for real; this in-process kill runs on the old layout, which has no fault hook, as well)."""


def kill_at(monkeypatch, when):
    """Make os.replace raise Killed when `when(file name, manifests written so far)` is true."""
    real, written = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        if when(name, written[0]):
            raise Killed(name)
        real(src, dst, *args, **kwargs)
        written[0] += name == "last.json"
    monkeypatch.setattr(os, "replace", replace)


def _epochs(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_checkpoint_resumable(tmp_path, capsys, tiny_data,
                                                                                  monkeypatch):
    """Regression (1): killed while the second checkpoint replaces the first, after its tensors are written and
    before its manifest is: b034da6 had overwritten `last.safetensors` already, so the manifest named a hash
    the file no longer had and --resume failed."""
    out = tmp_path / "run"
    kill_at(monkeypatch, lambda name, manifests: name == "last.json" and manifests == 1)
    with pytest.raises(Killed):
        main([str(a) for a in tiny_train(out, tiny_data)])
    monkeypatch.undo()
    record = json.loads((out / "last.json").read_text())
    weights = out / record["weights_file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["weights_sha256"], "previous checkpoint torn"
    capsys.readouterr()
    rc, err = run(tiny_train(out, tiny_data, 2, "--resume"), capsys)
    assert rc == 0, err[-2000:]
    assert _epochs(out) == [1, 2]
    assert len(list(out.glob("last*.safetensors"))) == 1


def test_training_again_into_a_run_folder_is_refused_and_changes_nothing(tmp_path, capsys, tiny_data):
    """Regression (2): b034da6 trained again into the folder, appending to metrics.jsonl and replacing the
    checkpoint."""
    out = tmp_path / "run"
    assert run(tiny_train(out, tiny_data, 1), capsys)[0] == 0
    before = listing(out)
    rc, err = run(tiny_train(out, tiny_data, 1), capsys)
    assert_error(rc, err, 2, "--resume", "--overwrite")
    assert listing(out) == before


def test_exported_names_that_differ_after_a_dot_are_distinct_models(tmp_path, capsys):
    """Regression (3): b034da6 cut `mnist-v1.0` and `mnist-v1.1` to `mnist-v1`, so the second export replaced
    the first and `eval exp/mnist-v1.0` evaluated the wrong model."""
    exp = tmp_path / "exp"
    exp.mkdir()
    assert run(["export", ESSAY, exp / "mnist-v1.0"], capsys)[0] == 0
    assert run(["export", MODELS / "mnist-equilibrium", exp / "mnist-v1.1"], capsys)[0] == 0
    assert {p.name for p in exp.glob("*.json")} == {"mnist-v1.0.json", "mnist-v1.1.json"}
    for name, parameters in (("mnist-v1.0", 15402), ("mnist-v1.1", 15466)):
        rc = main(["eval", str(exp / name), "--limit", "4", "--device", "cpu", "--json"])
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and row["parameters"] == parameters, (name, row["parameters"])


def test_metrics_hold_each_epoch_once_after_a_kill_between_the_metrics_and_the_checkpoint(tmp_path, capsys,
                                                                                          tiny_data, monkeypatch):
    """Regression (5): killed after epoch 2's record was appended and before its checkpoint was written;
    b034da6 resumed from epoch 1 and appended epoch 2's record a second time."""
    out = tmp_path / "run"
    kill_at(monkeypatch, lambda name, manifests: name.startswith("last") and manifests == 1)
    with pytest.raises(Killed):
        main([str(a) for a in tiny_train(out, tiny_data)])
    monkeypatch.undo()
    assert _epochs(out) == [1, 2]                                # the record ran ahead of the checkpoint
    capsys.readouterr()
    rc, err = run(tiny_train(out, tiny_data, 2, "--resume"), capsys)
    assert rc == 0, err[-2000:]
    assert _epochs(out) == [1, 2]


# ---- regression tests of the run folder: each fails on cfc3081 --------------------------------------------
# (the subprocess ones, two runs on one folder, SIGTERM, a real full disk and the fault hook, are in
# tests/test_faults.py)

@pytest.mark.parametrize("damage", ["missing", "not JSON"])
def test_resume_refuses_tensor_files_without_a_readable_last_json_and_changes_nothing(tmp_path, capsys, tiny_data,
                                                                                       damage):
    """Regression: with the tensor files there and last.json gone, cfc3081's --resume started afresh,
    deleted metrics.jsonl and, at its first checkpoint, the trained tensor file."""
    out = tmp_path / "run"
    assert run(tiny_train(out, tiny_data, 1), capsys)[0] == 0
    if damage == "missing":
        (out / "last.json").unlink()
    else:
        (out / "last.json").write_text('{"progress": {"global_step": 2}, "weights_fi')
    before = listing(out)
    rc, err = run(tiny_train(out, tiny_data, 2, "--resume"), capsys)
    assert_error(rc, err, 1, "last.json")
    assert listing(out) == before
    rc, err = run(tiny_train(out, tiny_data, 2), capsys)          # and a fresh run is refused as well
    assert_error(rc, err, 2, "already holds a run", "--overwrite")
    assert listing(out) == before


def test_cleanup_and_overwrite_delete_only_the_files_deqnca_wrote(tmp_path, capsys, tiny_data):
    """Regression: cfc3081's checkpoint clean-up removed every `last.*.safetensors` (a user's
    `last.backup.safetensors` too) and --overwrite every name starting with `last` (`last-notes.txt`)."""
    out = tmp_path / "run"
    out.mkdir()
    mine = {"last.backup.safetensors": b"a backup of mine", "last-notes.txt": b"notes", "last": b"a file",
            ".last.json.notes.tmp": b"not a temporary of deqnca's"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert run(tiny_train(out, tiny_data, 2, "--checkpoint-every", "1"), capsys)[0] == 0     # 4 checkpoints
    assert run(tiny_train(out, tiny_data, 1, "--overwrite"), capsys)[0] == 0
    assert {name: (out / name).read_bytes() for name in mine if (out / name).exists()} == mine
    assert _epochs(out) == [1] and (out / ".deqnca.lock").exists()      # the run was replaced, the lock kept
    record = json.loads((out / "last.json").read_text())
    assert sorted(p.name for p in out.glob("last.*.safetensors")) == sorted([record["weights_file"],
                                                                               "last.backup.safetensors"])


def test_temporary_files_a_kill_left_are_removed_on_the_next_start(tmp_path, capsys, tiny_data):
    """Regression: a kill inside a write leaves atomic_write's temporary file (`.<name>.<random>.tmp`), and
    cfc3081 removed none. Only deqnca's own temporaries go; a user's files stay."""
    out = tmp_path / "run"
    assert run(tiny_train(out, tiny_data, 1), capsys)[0] == 0
    strays = [".last.json.k2j4_x9a.tmp", ".config.json.abcdefgh.tmp", ".metrics.jsonl.0a1b2c3d.tmp",
              ".last.staging.safetensors.zz_9yx8w.tmp", "last.staging.safetensors"]
    users = [".notes.txt.abcdefgh.tmp", "results.tmp", ".last.json.tmp"]
    for name in strays + users:
        (out / name).write_bytes(b"left over")
    assert run(tiny_train(out, tiny_data, 2, "--resume"), capsys)[0] == 0
    assert _epochs(out) == [1, 2]
    left = {p.name for p in out.iterdir()}
    assert not left & set(strays), sorted(left & set(strays))
    assert set(users) <= left


def test_a_corrupt_middle_line_of_metrics_is_an_error_that_names_it_and_a_torn_last_line_is_dropped(
        tmp_path, capsys, tiny_data):
    """Regression: one corrupt line in the middle of metrics.jsonl made cfc3081's --resume drop it and every
    later valid record, silently. Only a torn last line (a kill inside the write) may be dropped."""
    out = tmp_path / "run"
    assert run(tiny_train(out, tiny_data, 2), capsys)[0] == 0
    good = (out / "metrics.jsonl").read_text()
    lines = good.splitlines(keepends=True)
    (out / "metrics.jsonl").write_text('{"epoch": 1, "glob\n' + "".join(lines[1:]))
    before = listing(out)
    rc, err = run(tiny_train(out, tiny_data, 3, "--resume"), capsys)
    assert_error(rc, err, 1, "metrics.jsonl: line 1 ", "fix or delete that line")
    assert listing(out) == before
    (out / "metrics.jsonl").write_text(good + '{"epoch": 3, "train_loss": 2.3')      # torn: no newline
    rc, err = run(tiny_train(out, tiny_data, 3, "--resume"), capsys)
    assert rc == 0, err[-2000:]
    assert _epochs(out) == [1, 2, 3]
