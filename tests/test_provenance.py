"""A run knows its data: its dataset's identity (name, source, content hash, sizes, shape, labels) is in
config.json, every checkpoint and every export; `--resume`, `eval`, `rollout`, `cells eval` and `info` use or
name the recorded data and refuse other data in one line (docs/guarantees.md, "A run knows its data").

Each test drives the command line only, so it also runs against a checkout from before data was recorded
(there it fails: the run continued on, or was scored on, the vendored MNIST without a word)."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deqnca.cli import main
from deqnca.core.resources import mnist_dir
from deqnca.data.idx import load_split

TINY = ["--set", "input_channels=4", "--set", "state_channels=8", "--set", "hidden=16",
        "--set", 'solver_kw={"max_iter": 2}', "--batch-size", "32", "--train-subset", "200", "--test-subset", "100",
        "--device", "cpu", "--json"]


def write_idx_set(folder: Path, train: int = 200, test: int = 100, relabel=lambda y: 9 - y) -> Path:
    """A small foreign MNIST-layout set: the first MNIST images, inverted, with labels mapped by `relabel`,
    as the four uncompressed IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, stem, n in (("train", "train", train), ("test", "t10k", test)):
        images, labels = load_split(mnist_dir(), split)
        images, labels = 255 - images[:n], relabel(labels[:n]).astype(np.uint8)
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", *images.shape)
                                                          + images.tobytes())
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n)
                                                          + labels.tobytes())
    return folder


def _train(out, *extra):
    return main(["train", *TINY, "--out", str(out), *extra])


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("deqnca")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def foreign_run(tmp_path, capsys, one_thread):
    """(data folder, run folder): one epoch trained on a foreign IDX set given by --data-dir."""
    data = write_idx_set(tmp_path / "foreign")
    assert _train(tmp_path / "run", "--epochs", "1", "--data-dir", str(data), "--no-verify") == 0
    capsys.readouterr()
    return data, tmp_path / "run"


def _weights(run: Path) -> dict:
    from deqnca.engine.checkpoint import read_checkpoint

    return {k: v for k, v in read_checkpoint(run / "last")[0].items() if k.startswith("model.")}


@pytest.mark.slow
def test_a_run_records_its_data_in_its_config_every_checkpoint_and_its_export(foreign_run, tmp_path, capsys):
    data, run = foreign_run
    record = json.loads((run / "config.json").read_text())["data"]
    assert record["name"] == "idx:foreign" and record["source"] == str(data.resolve())
    assert record["train"] == 200 and record["test"] == 100 and record["shape"] == [1, 28, 28]
    assert record["labels"] == list(range(10)) and len(record["sha256"]) == 64
    assert json.loads((run / "last.json").read_text())["data"] == record
    assert main(["export", str(run / "last"), str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported.json").read_text())["data"] == record
    capsys.readouterr()
    assert main(["info", str(tmp_path / "exported")]) == 0
    text = " ".join(capsys.readouterr().out.split())           # unwrapped
    assert f"trained on idx:foreign ({data.resolve()}; 200 train / 100 test" in text, text


@pytest.mark.slow
def test_resume_without_data_dir_continues_on_the_recorded_data(foreign_run, tmp_path, capsys):
    data, run = foreign_run
    assert _train(run, "--resume", "--epochs", "2") == 0            # no --data-dir: the run's own data
    assert _train(tmp_path / "straight", "--epochs", "2", "--data-dir", str(data), "--no-verify") == 0
    mine, straight = _weights(run), _weights(tmp_path / "straight")
    assert mine.keys() == straight.keys() and all(torch.equal(mine[k], straight[k]) for k in mine)


@pytest.mark.slow
def test_resume_on_other_data_is_refused_naming_both(foreign_run, tmp_path, capsys):
    data, run = foreign_run
    before = (run / "last.json").read_text()
    assert _train(run, "--resume", "--epochs", "2", "--data-dir", str(mnist_dir())) == 2
    line = _one_line(capsys)
    assert "idx:foreign" in line and str(data.resolve()) in line and "mnist" in line, line
    other = write_idx_set(tmp_path / "shuffled", relabel=lambda y: (y + 3) % 10)       # same images, other labels
    assert _train(run, "--resume", "--epochs", "2", "--data-dir", str(other), "--no-verify") == 2
    line = _one_line(capsys)
    assert "idx:foreign" in line and "idx:shuffled" in line, line
    assert (run / "last.json").read_text() == before


@pytest.mark.slow
def test_resume_and_eval_name_the_recorded_data_when_it_is_gone(foreign_run, tmp_path, capsys):
    data, run = foreign_run
    data.rename(tmp_path / "moved")
    assert _train(run, "--resume", "--epochs", "2") == 2
    line = _one_line(capsys)
    assert "idx:foreign" in line and str(data.resolve()) in line and "--data-dir" in line, line
    assert main(["eval", str(run / "last"), "--device", "cpu", "--limit", "150"]) == 2
    line = _one_line(capsys)
    assert "idx:foreign" in line and "--data-dir" in line, line
    # the same files in another folder are the same data
    assert _train(run, "--resume", "--epochs", "2", "--data-dir", str(tmp_path / "moved")) == 0


@pytest.mark.slow
def test_eval_uses_the_recorded_data_and_refuses_other_data_in_one_line(foreign_run, capsys):
    data, run = foreign_run
    assert main(["eval", str(run / "last"), "--device", "cpu", "--limit", "150", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["n"] == 100 and row["data"] == "idx:foreign", row          # the foreign set's 100 test images
    assert main(["eval", str(run / "last"), "--device", "cpu", "--limit", "150", "--data-dir", str(mnist_dir())]) == 2
    line = _one_line(capsys)
    assert "idx:foreign" in line and "mnist" in line and "--allow-other-data" in line, line
    assert main(["eval", str(run / "last"), "--device", "cpu", "--limit", "150", "--data-dir", str(mnist_dir()),
                 "--allow-other-data", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["n"] == 150 and row["data"] == "mnist" and row["trained_on"] == "idx:foreign"


@pytest.mark.slow
def test_rollout_reads_the_recorded_test_set(foreign_run, tmp_path, capsys):
    data, run = foreign_run
    assert main(["rollout", str(run / "last"), "--index", "3", "--steps", "2", "--device", "cpu", "--json",
                 "--out", str(tmp_path / "roll")]) == 0
    trace = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, labels = load_split(data, "test")
    assert trace["label"] == int(labels[3]) == 9 - int(load_split(mnist_dir(), "test")[1][3])
    assert main(["rollout", str(run / "last"), "--index", "3", "--steps", "2", "--device", "cpu",
                 "--data-dir", str(mnist_dir()), "--out", str(tmp_path / "roll")]) == 2
    assert "idx:foreign" in _one_line(capsys)


@pytest.mark.slow
def test_info_says_what_a_model_was_trained_on(foreign_run, capsys):
    _, run = foreign_run
    assert main(["info", str(run / "last")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "/last: idx:foreign classifier (EquilibriumModel), 1,226 parameters data trained on idx:foreign" in text
    assert main(["info", "mnist-essay"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "trained on mnist (vendored; 60,000 train / 10,000 test, 1×28×28, labels 0–9" in text, text


def test_the_record_of_an_idx_folder_hashes_its_files_contents(tmp_path):
    import gzip
    import hashlib

    from deqnca.data.provenance import MNIST_SHA256, idx_data, short

    data = write_idx_set(tmp_path / "foreign", train=20, test=10)
    (x, y, xt, yt), record = idx_data(data)
    assert record["files"]["t10k-images-idx3-ubyte"] == hashlib.sha256(
        (data / "t10k-images-idx3-ubyte").read_bytes()).hexdigest()
    assert (record["name"], record["train"], record["test"], len(xt)) == ("idx:foreign", 20, 10, 10)
    assert short(record) == f"idx:foreign (sha256 {record['sha256'][:12]}, from {data.resolve()})"
    # gzipped, the same contents are the same data; the vendored files are MNIST's
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in data.iterdir():
        (copy / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    assert idx_data(copy)[1]["sha256"] == record["sha256"]
    mnist = idx_data()[1]
    assert mnist["name"] == "mnist" and mnist["source"] == "vendored" and mnist["files"] == MNIST_SHA256


def test_resuming_on_data_with_another_hash_is_a_config_error_naming_both():
    from deqnca.core.configs import ConfigError
    from deqnca.engine.run import check_same_data

    run = {"name": "idx:fashion", "source": "/data/fashion", "sha256": "a" * 64}
    check_same_data(run, {**run, "name": "idx:copy", "source": "/elsewhere"})       # the same contents
    with pytest.raises(ConfigError, match=r"trained on idx:fashion \(sha256 aaaaaaaaaaaa, from /data/fashion\), not "
                                          r"mnist \(sha256 bbbbbbbbbbbb, installed with deqnca\)"):
        check_same_data(run, {"name": "mnist", "source": "vendored", "sha256": "b" * 64})
    said = []
    check_same_data(None, run, said.append)                    # a run from before records: goes on, said so
    assert "recorded no data" in said[0]


def test_shipped_models_record_their_data(capsys):
    from deqnca.core.resources import models_dir
    from deqnca.data.provenance import idx_data, tensor_sha256
    from deqnca.tasks import load

    mnist = idx_data()[1]
    names = {}
    for path in sorted(models_dir().rglob("*.json")):
        meta = json.loads(path.read_text())
        name = str(path.relative_to(models_dir()).with_suffix(""))
        names[name] = meta["data"]["name"]
        if meta["kind"] in ("mnist", "cells", "cnn"):
            assert meta["data"] == mnist, name
        elif meta["kind"] == "grow":
            model, _ = load(name)
            assert meta["data"]["sha256"] == tensor_sha256(model.target.float()), name
    assert names["grow/lizard-equilibrium"] == "target:lizard.png" and names["maze/geodesic-mix"] == "mazes:mix"
    assert names["maze/dt"] == "mazes:dfs" and names["cells/consensus"] == "mnist"


@pytest.mark.slow
def test_shipped_maze_records_are_their_generator_sets():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "record_shipped_data.py"), "--check"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_a_maze_run_records_its_generator_set(tmp_path, capsys, one_thread):
    args = ["maze", "train", "--model", "dt", "--width", "4", "--train-size", "5", "--train-count", "8",
            "--val-count", "4", "--batch-size", "4", "--epochs", "1", "--set", "train_iters=2", "--device", "cpu",
            "--cache", str(tmp_path / "cache"), "--json", "--out", str(tmp_path / "maze")]
    assert main(args) == 0
    record = json.loads((tmp_path / "maze" / "last.json").read_text())["data"]
    assert record["name"] == "mazes:dfs" and record["sizes"] == [5] and record["train"] == 8
    assert record == json.loads((tmp_path / "maze" / "config.json").read_text())["data"]
    assert main(["info", str(tmp_path / "maze" / "last")]) == 0
    assert "trained on mazes:dfs (generated; 8 train / 4 test" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_a_grow_run_resumed_without_target_continues_on_its_own(tmp_path, capsys, one_thread):
    grow = ["grow", "train", "--target", "small", "--pool-size", "8", "--batch-size", "2", "--rollout-steps", "4",
            "6", "--log-every", "1", "--device", "cpu", "--json", "--out", str(tmp_path / "g")]
    assert main([*grow, "--steps", "2"]) == 0
    resumed = [a for a in grow if a not in ("--target", "small")]
    assert main([*resumed, "--steps", "3", "--resume"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "g" / "last.json").read_text())["data"]
    assert record["name"] == "target:small.png" and record["shape"] == [4, 24, 24]


@pytest.mark.slow
def test_a_cells_run_records_the_mnist_files_it_read_and_its_eval_checks_them(tmp_path, capsys, one_thread):
    from deqnca.data.provenance import idx_data

    assert main(["cells", "train", "--model", "article", "--size", "14", "--train-images", "64", "--steps", "2",
                 "--batch-size", "4", "--pool-size", "8", "--fresh", "1", "--mutate", "1", "--rollout-steps", "2",
                 "--eval-images", "4", "--eval-marks", "[2]", "--device", "cpu", "--json",
                 "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "last.json").read_text())["data"] == idx_data()[1]
    capsys.readouterr()
    assert main(["cells", "eval", str(tmp_path / "c" / "last"), "--images", "8", "--marks", "2", "--device", "cpu",
                 "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 8
