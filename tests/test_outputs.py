"""What a new user's commands write and say: every command's default output under `out/<command>/`, picture
names without a doubled part, `deqnca info` citing scripts that exist, and `deqnca eval` saying how long a long
evaluation takes and how to ask for less."""
import argparse
import json
import re
from pathlib import Path

import pytest

from deqnca.cli import build_parser, main
from deqnca.core.resources import shipped_names

ROOT = Path(__file__).resolve().parents[1]


def _out_flags(parser, command=()):
    """(command words, the --out action) of every sub-command that has --out."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _out_flags(sub, (*command, name))
        elif "--out" in action.option_strings:
            yield command, action


def test_every_command_writes_under_out_by_default():
    seen = {}
    for command, action in _out_flags(build_parser([])):
        if command[-1] == "train":          # a run folder (resumable, with checkpoints): runs/<...>
            assert "runs/" in action.help, command
            continue
        if command == ("cells", "eval"):    # an optional JSON file: nothing is written without it
            assert action.default is None
            continue
        seen[command] = action.default
        where = "out/" + "-".join(command)
        if action.default is None:          # computed: a folder per model under out/<command>/
            assert f"default: {where}/" in action.help, (command, action.help)
        else:
            assert action.default == where, (command, action.default)
    assert {("demo",), ("rollout",), ("web",), ("grow", "show"), ("maze", "show"), ("cells", "figures")} <= set(seen)


def test_grow_show_writes_under_out_grow_show(tmp_path, monkeypatch, capsys):
    from deqnca.tasks.grow.cli import show_name

    assert show_name("grow/lizard-bptt") == "lizard-bptt" and show_name("runs/grow-a/last") == "grow-a"
    monkeypatch.chdir(tmp_path)
    assert main(["grow", "show", "grow/lizard-equilibrium", "--steps", "3", "--device", "cpu"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"out"}
    assert (tmp_path / "out" / "grow-show" / "lizard-equilibrium" / "frames.png").is_file()


def test_maze_pictures_are_named_without_a_doubled_part(tmp_path, capsys):
    from deqnca.tasks.maze.pictures import picture_name

    assert picture_name("maze/dt", "dt") == "dt" and picture_name("maze/dt-5to13", "dt") == "dt-5to13"
    assert picture_name("maze/deq-res", "deq") == "deq-res" and picture_name("maze/geodesic", "geodesic") == "geodesic"
    assert picture_name("runs/maze-b/last", "geodesic") == "maze-b-geodesic"
    assert main(["maze", "show", "maze/dt", "--size", "5", "--max-iters", "4", "--device", "cpu",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "show")]) == 0
    assert {p.stem for p in (tmp_path / "show").iterdir()} == {"dt-size5-0"}


def test_info_cites_only_scripts_that_exist(capsys):
    from deqnca.engine.checkpoint import read_checkpoint
    from deqnca.engine.summary import describe_checkpoint
    from deqnca.tasks import load_builtin_tasks

    load_builtin_tasks()
    cited = set()
    for name in shipped_names():
        text = describe_checkpoint(read_checkpoint(name, tensors=False)[1], name)
        cited |= set(re.findall(r"\b((?:experiments|scripts)/[\w.-]+\.(?:sh|py))", text))
    assert cited and all((ROOT / c).is_file() for c in cited), sorted(c for c in cited if not (ROOT / c).is_file())


def test_a_long_eval_says_how_long_and_how_to_ask_for_less(monkeypatch, capsys):
    import deqnca.cli.mnist as cli_mnist

    monkeypatch.setattr(cli_mnist, "ETA_FROM", 100)         # 150 images count as many here
    assert main(["eval", "mnist-essay", "--limit", "150", "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 150                      # stdout: the JSON alone
    line = next(s for s in err.splitlines() if "test images, about" in s)
    assert re.search(r"mnist-essay: 150 test images, about \d+ s on this machine", line), line
    assert "--sample 1000" in line and "--limit 500" in line
    assert main(["eval", "mnist-essay", "--limit", "50", "--device", "cpu", "--json"]) == 0
    assert "about" not in capsys.readouterr().err            # a short one says nothing


@pytest.mark.parametrize("argv", [["web", "--no-examples"]])
def test_web_writes_under_out_web_by_default(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert (tmp_path / "out" / "web" / "index.html").is_file() and {p.name for p in tmp_path.iterdir()} == {"out"}
