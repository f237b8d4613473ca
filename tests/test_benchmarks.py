"""The speed benchmarks stay runnable: a tiny same-run race writes its table and JSON."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_epochs_race_smoke(tmp_path, capsys):
    import epochs_race

    out = tmp_path / "race.json"
    epochs_race.main(["--baselines", "fixed16", "--presets", "essay,essay+bf16", "--train-limit", "128",
                      "--eval-limit", "64", "--json-out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"plain TorchDeq fixed16", "deqnca essay", "deqnca essay+bf16"}
    for row in rows.values():
        assert len(row["epoch_s"]) == 1 and row["epoch_s"][0] > 0
        assert row["skipped_steps"] == 0            # both configurations take finite SGD steps
    assert "| deqnca essay |" in capsys.readouterr().out


def test_plain_torchdeq_fixed16_is_finite_and_differentiable():
    from mnist_speed import PlainTorchDEQ

    torch.manual_seed(0)
    model = PlainTorchDEQ("fixed16")
    logits = model(torch.rand(4, 1, 12, 12))
    logits.sum().backward()
    assert torch.isfinite(logits).all() and model.nstep == 16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_preset_variants_name_their_graph_and_precision():
    import pytest

    from mnist_speed import preset_variant

    assert preset_variant("essay") == ("essay", False, "off")
    assert preset_variant("equilibrium-fixed+graph") == ("equilibrium-fixed", True, "off")
    assert preset_variant("essay+bf16") == ("essay", False, "bf16")
    with pytest.raises(ValueError, match="unknown preset suffix"):
        preset_variant("essay+fp8")


def test_mnist_speed_refuses_to_graph_a_preset_with_an_adaptive_solve(capsys):
    import pytest

    import mnist_speed

    with pytest.raises(SystemExit) as e:
        mnist_speed.main(["--presets", "equilibrium+graph", "--baselines", "fixed16", "--batches", "1"])
    assert e.value.code == 2 and "stopping test" in capsys.readouterr().err


def test_eval_sweep_smoke(tmp_path, capsys):
    import eval_sweep

    out = tmp_path / "sweep.json"
    eval_sweep.main(["--images", "20", "--batches", "10", "--threads", "1", "--tols", "1e-3", "--tol-images", "20",
                     "--tol-amps", "off", "--json-out", str(out)])
    result = json.loads(out.read_text())
    assert len(result["timing"]) == 4          # two models x two layouts
    assert all(r["s_per_1000"] > 0 and r["nstep_mean"] >= 1 for r in result["timing"])
    assert result["tolerance"][0]["tol"] == 1e-3 and "| essay | off | 10 |" in capsys.readouterr().out


def test_cells_vs_cax_runs_and_says_when_cax_is_skipped(tmp_path, capsys):
    import cells_vs_cax

    out = tmp_path / "cells.json"
    assert cells_vs_cax.main(["--steps", "1", "--warmup", "0", "--horizons", "--skip-cax", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["speed"][0]["library"] == "deqnca" and r["speed"][0]["parameters"] == 22_499
    assert "cax_skipped" in r and "CAX skipped" in capsys.readouterr().err


def test_geodesic_solve_benchmark_ends_in_the_same_state_every_way(tmp_path, capsys):
    import geodesic_solve

    out = tmp_path / "geo.json"
    assert geodesic_solve.main(["--size", "9", "--mazes", "2", "--json-out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["same_states"] and set(rec["rows"]) == {"checked every step", "checked every 8 steps",
                                                       "compiled, checked every 8"}
    assert all(r["seconds_per_maze"] > 0 and r["steps"] > 10 for r in rec["rows"].values())
