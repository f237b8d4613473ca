"""The command line: help, eval of the shipped model, clear one-line errors and exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deqnca.cli import main
from deqnca.core.resources import models_dir

ROOT = Path(__file__).resolve().parents[1]
ESSAY = models_dir() / "mnist-essay"


def _commands(parser, prefix=()):
    """Every command path of the parser, e.g. ("grow", "train")."""
    import argparse

    yield list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


@pytest.mark.parametrize("cmd", list(_commands(__import__("deqnca.cli", fromlist=["build_parser"]).build_parser())),
                         ids=lambda c: " ".join(c) or "deqnca")
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: deqnca" in capsys.readouterr().out


def test_eval_shipped_essay_model_json(capsys):
    rc = main(["eval", str(ESSAY), "--device", "cpu", "--limit", "500", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["parameters"] == 15402 <= 16000
    assert r["accuracy"] >= 0.95                    # 98.15% on all 10,000; first 500 are easier
    assert 0.05 < r["rel_median"] < 0.1             # far from equilibrium, and reported as such


def test_eval_shipped_equilibrium_model_reaches_its_fixed_point(capsys):
    rc = main(["eval", "mnist-equilibrium", "--device", "cpu", "--limit", "300", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["parameters"] == 15466 <= 16000
    assert r["accuracy"] >= 0.95                    # 97.70% on all 10,000
    assert r["frac_below_1e-3"] == 1.0 and r["rel_max"] <= 1e-4 * 1.001   # at equilibrium, every image


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    rc = main(["eval", str(tmp_path / "nope"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "missing" in err


def test_bad_data_dir_is_one_line_error(tmp_path, capsys):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12)
    rc = main(["eval", str(ESSAY), "--device", "cpu", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err


def test_unknown_override_and_usage_errors(capsys):
    assert main(["train", "--set", "nonsense", "--epochs", "1"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "nope"])
    assert e.value.code == 2


def test_cuda_request_without_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["eval", str(ESSAY), "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "deqnca.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "deqnca" in out.stdout


def test_forcing_a_cuda_graph_without_cuda_is_a_one_line_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    rc = main(["train", "--cuda-graph", "on", "--epochs", "1", "--train-subset", "64", "--test-subset", "8",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "cuda_graph='on' but CUDA graphs need a CUDA device" in err[-1]


def test_train_amp_flag_reaches_the_run_config(tmp_path, capsys):
    import json

    rc = main(["train", "--amp", "bf16", "--epochs", "1", "--train-subset", "64", "--test-subset", "8",
               "--device", "cpu", "--out", str(tmp_path), "--json"])
    assert rc == 0
    assert json.loads((tmp_path / "config.json").read_text())["train"]["amp"] == "bf16"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    with pytest.raises(SystemExit) as e:
        main(["train", "--amp", "fp8"])
    assert e.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_eval_under_bf16_autocast_keeps_the_shipped_accuracy(capsys):
    import json

    rc = main(["eval", "mnist-essay", "--limit", "200", "--amp", "bf16", "--device", "cpu", "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and row["amp"] == "bf16" and row["accuracy"] >= 0.95, row


def test_info_summarises_and_json_prints_the_record(capsys):
    assert main(["info", "mnist-essay"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("mnist-essay: MNIST classifier") and "15,402 parameters" in text
    assert "rule residual_tanh" in text and "test_acc 0.9819" in text
    assert main(["info", "grow/lizard-equilibrium", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "grow" and "optimizer" not in record
    assert main(["info", "cells/equilibrium"]) == 0
    assert capsys.readouterr().out.startswith("cells/equilibrium: self-classifying CA (equilibrium model), 15,690")


def test_help_opens_with_one_whole_sentence(capsys):
    import pytest as _pytest

    from deqnca.cli import main as _main

    with _pytest.raises(SystemExit):
        _main(["--help"])
    text = capsys.readouterr().out.split("\n\n")[1].replace("\n", " ").strip()
    assert text.endswith(".") and text.count(". ") == 0 and text[0].isupper(), text
    assert "neural cellular automaton" in text and "fixed point" in text
