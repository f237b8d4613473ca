"""`--plugin` on every command: a user's rule, solver, task or model kind loads before the command line is read,
and an invalid command line is refused before any plugin code runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "plugins"))      # the plugin files, importable by name

from deqnca.cli import build_parser, main

PLUGINS = Path(__file__).parent / "plugins"


def _marker_plugin(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "plugin-ran"
    plugin = tmp_path / "marker_plugin.py"
    plugin.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return plugin, marker


def _leaves(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, command in action.choices.items():
            yield from _leaves(command, (*prefix, name))


def test_every_command_takes_plugin():
    missing = [" ".join(name) for name, command in _leaves(build_parser()) if "--plugin" not in
               command._option_string_actions]
    assert not missing, missing


@pytest.mark.parametrize("argv", [
    ["eval", "mnist-essay", "--bogus"],                          # an unknown flag
    ["eval", "mnist-essay", "--limit", "-3"],                    # a value out of range
    ["maze", "show", "maze/dt", "--sizee", "9"],                 # a task command's unknown flag
    ["grow", "show"],                                            # a missing argument
    ["rollout", "mnist-essay", "--steps", "many"],               # a malformed value
])
def test_an_invalid_command_line_exits_2_before_any_plugin_code_runs(tmp_path, argv, capsys):
    plugin, marker = _marker_plugin(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--plugin", str(plugin)])
    assert e.value.code == 2
    assert not marker.exists(), "the plugin ran although the command line was invalid"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_a_name_a_plugin_registers_is_accepted_then_checked(tmp_path, capsys):
    plugin, marker = _marker_plugin(tmp_path)
    with pytest.raises(SystemExit) as e:           # the plugin registers no solver "nosuch": refused after it ran
        main(["eval", "mnist-essay", "--solver", "nosuch", "--plugin", str(plugin)])
    assert e.value.code == 2 and marker.exists()
    assert "not a registered solver" in capsys.readouterr().err


@pytest.mark.parametrize("source, what", [("def broken(:\n", "SyntaxError: invalid syntax, line 1"),
                                          ("import nosuchmodule_xyz\n", "ModuleNotFoundError"),
                                          ("raise RuntimeError('boom')\n", "RuntimeError: boom")])
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, capsys, source, what):
    plugin = tmp_path / "broken.py"
    plugin.write_text(source)
    assert main(["info", "mnist-essay", "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(plugin) in err[0] and what in err[0], err


@pytest.mark.slow
def test_eval_of_a_plugin_rule_checkpoint_needs_and_takes_its_plugin(tmp_path, capsys):
    plugin = str(PLUGINS / "leaky_rule.py")
    rc = main(["train", "--train-subset", "64", "--test-subset", "16", "--epochs", "1", "--batch-size", "32",
               "--device", "cpu", "--json", "--out", str(tmp_path / "run"), "--plugin", plugin,
               "--set", "rule=leaky_tanh", "--set", "solver=rollout", "--set", 'solver_kw={"max_iter": 3}',
               "--set", "gradient=bptt"])
    assert rc == 0, capsys.readouterr().err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DEQNCA_PLUGINS", None)
    run = [sys.executable, "-m", "deqnca.cli", "eval", str(tmp_path / "run" / "last"), "--limit", "16", "--json",
           "--device", "cpu"]
    fresh = subprocess.run([*run, "--plugin", plugin], capture_output=True, text=True, env=env)   # a new process
    assert fresh.returncode == 0, fresh.stderr
    record = json.loads(fresh.stdout)
    record = record[0] if isinstance(record, list) else record
    assert record["n"] == 16 and 0 <= record["accuracy"] <= 1
    without = subprocess.run(run, capture_output=True, text=True, env=env)
    assert without.returncode != 0 and "leaky_tanh" in without.stderr and len(without.stderr.strip().splitlines()) == 1


HEAT = str(PLUGINS / "heat_task.py")


@pytest.mark.slow
def test_a_new_task_is_one_file_outside_the_package(tmp_path, capsys):
    # heat diffusion's rule learned from its fixed points: model kind, config, preset and task in one file that
    # no package file names; it trains, evaluates, rolls out as an NCA, exports, loads back and is described
    import torch

    import deqnca

    run, shipped = tmp_path / "run", tmp_path / "shipped" / "heat"
    assert main(["train", "--task", "heat", "--plugin", HEAT, "--out", str(run), "--device", "cpu", "--json",
                 "--epochs", "3", "--train-count", "128"]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    model, meta = deqnca.load(run / "last")
    stencil = model.kernel()[0, 0]
    cross = stencil[[0, 1, 1, 2], [1, 0, 2, 1]]
    assert meta["kind"] == "heat" and history[-1]["test_mae"] < 0.03, history
    assert cross.min() > 0.15 and stencil[[0, 0, 1, 2, 2], [0, 2, 1, 0, 2]].max() < 0.06, stencil   # Jacobi's cross
    capsys.readouterr()

    assert main(["eval", str(run / "last"), "--plugin", HEAT, "--json", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "heat" and record["test_mae"] == pytest.approx(history[-1]["test_mae"], rel=1e-5)

    x, target = __import__("heat_task").heat_problems(4, 10, 6, seed=123)
    roll = deqnca.rollout(model, x, steps=400, generator=torch.Generator().manual_seed(0))
    z_solved, _ = model.solve(x, generator=torch.Generator().manual_seed(0))
    assert roll.rel_residual[:, -1].max() < 1e-4                      # the NCA view reaches the DEQ's fixed point
    assert (roll.states[:, -1] - z_solved).abs().max() < 1e-3

    assert main(["export", str(run / "last"), str(shipped), "--plugin", HEAT]) == 0
    exported, exported_meta = deqnca.load(shipped)
    assert torch.equal(exported.stencil, model.stencil) and exported_meta["kind"] == "heat"
    capsys.readouterr()
    assert main(["info", str(shipped), "--plugin", HEAT, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "heat" and info["parameters"] == 9
    assert not any("heat" in f.read_text() for f in (Path(deqnca.__file__).parent).rglob("*.py"))
