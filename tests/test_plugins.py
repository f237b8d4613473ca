"""`--plugin` on every command: a user's rule, solver, task or model kind loads before the command line is read,
and an invalid command line is refused before any plugin code runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
