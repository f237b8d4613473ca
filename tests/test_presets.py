"""Presets and the strict loader: every task's presets are functions returning that task's config, every config
refuses unknown keys, and the train commands build the configs they built before presets were functions."""
import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest

import deqnca
from deqnca.cli import main
from deqnca.core.configs import ConfigError, load_dataclass
from deqnca.core.registry import Registry

SRC = Path(deqnca.__file__).resolve().parent
TASKS = ["mnist", "grow", "cells", "maze"]


def _task_config(task: str):
    """(the task config module, the task's Config class, the model config class its presets hold or None)."""
    import importlib

    from deqnca.engine.trainer import TASKS as REGISTERED
    from deqnca.tasks import load_builtin_tasks

    load_builtin_tasks()
    module = importlib.import_module(f"deqnca.tasks.{task}.config")
    config_cls = REGISTERED.get(task).Config
    model_cls = {"mnist": ("deqnca.tasks.mnist.model", "ModelConfig", "model"),
                 "grow": ("deqnca.tasks.grow.rule", "GrowingConfig", "rule"),
                 "maze": ("deqnca.tasks.maze.model_config", "MazeNetConfig", "model")}.get(task)
    if model_cls:
        model_cls = (getattr(importlib.import_module(model_cls[0]), model_cls[1]), model_cls[2])
    return module, config_cls, model_cls


@pytest.mark.parametrize("task", TASKS)
def test_every_preset_is_a_function_returning_its_task_config(task):
    module, config_cls, model = _task_config(task)
    assert isinstance(module.PRESETS, Registry) and len(module.PRESETS) >= 2
    for name in module.PRESETS:
        make = module.PRESETS.get(name)
        assert inspect.isfunction(make) and not inspect.signature(make).parameters, name
        assert len(inspect.getdoc(make) or "") >= 20, f"{task} preset {name}: say what it is in a docstring"
        cfg = make()
        assert type(cfg) is config_cls, name
        assert make() == cfg and make() is not cfg, name                  # a fresh config every call
        assert load_dataclass(config_cls, dataclasses.asdict(cfg)) == cfg, name   # one the strict loader takes
        cfg.validate()
        if model:
            model_cls, field = model
            model_cls.from_dict(getattr(cfg, field))                         # and its model config too


def test_the_built_in_presets():
    from deqnca.tasks.cells.config import PRESETS as CELLS
    from deqnca.tasks.grow.config import PRESETS as GROW
    from deqnca.tasks.maze.config import PRESETS as MAZE
    from deqnca.tasks.mnist.config import PRESETS as MNIST

    assert MNIST.names() == ["equilibrium", "equilibrium-fast", "equilibrium-fixed", "equilibrium-strided",
                             "equilibrium-v0", "essay", "essay-broyden"]
    assert GROW.names() == ["equilibrium", "window"]
    assert CELLS.names() == ["article", "consensus", "equilibrium"]
    assert MAZE.names() == ["deq", "dt", "geodesic", "trace"]
    assert all(CELLS.build(name).model == name for name in CELLS)             # `cells train --model NAME`
    assert all(MAZE.build(name).model["model"] == name for name in MAZE)      # `maze train --model NAME`
    assert deqnca.PRESETS is MNIST and deqnca.preset("essay") == MNIST.build("essay")


def test_mnist_preset_overrides_drop_the_old_parts_options():
    from deqnca.tasks.mnist.config import MnistConfig, preset

    cfg = preset("equilibrium", {"solver": "rollout", "gradient_kw": {"b_max_iter": 5}}, lr=0.1, epochs=1)
    assert isinstance(cfg, MnistConfig) and (cfg.lr, cfg.epochs, cfg.optimizer) == (0.1, 1, "adam")
    assert cfg.model["solver_kw"] == {}                                       # another solver: its options go
    assert cfg.model["gradient_kw"] == {"b_solver": "fixed_point", "b_max_iter": 5, "b_tol": 1e-4}   # merged
    assert preset("essay", {"solver": "rollout"}).model["solver_kw"] == {"max_iter": 16}   # the same: kept
    with pytest.raises(ConfigError, match="unknown model config keys"):
        preset("essay", {"solver_iters": 3})
    with pytest.raises(ConfigError, match="unknown train config keys"):
        preset("essay", epoch=3)
    with pytest.raises(ValueError, match="unknown MNIST preset 'nope'; choose one of equilibrium"):
        preset("nope")


def test_a_registered_preset_is_a_choice_of_the_train_command(monkeypatch):
    from deqnca.tasks.mnist.config import PRESETS

    @PRESETS.register("tiny-essay")
    def tiny_essay():
        """The essay's preset, two epochs."""
        cfg = PRESETS.build("essay")
        cfg.epochs = 2
        return cfg

    try:
        cfg, _, _ = _train_config(monkeypatch, ["train", "--preset", "tiny-essay"])
    finally:
        PRESETS.unregister("tiny-essay")
    assert cfg == {**dataclasses.asdict(PRESETS.build("essay")), "epochs": 2}


def _configs():
    from deqnca.engine.trainer import TASKS as REGISTERED
    from deqnca.tasks import load_builtin_tasks

    load_builtin_tasks()
    return {name: REGISTERED.get(name).Config for name in ("mnist", "grow", "cells", "maze", "cnn")}


def _model_configs():
    from deqnca.tasks.cells.model import CellsModelConfig
    from deqnca.tasks.grow.rule import GrowingConfig
    from deqnca.tasks.maze.model_config import MazeNetConfig
    from deqnca.tasks.mnist.model import ModelConfig

    return {"mnist": ModelConfig, "grow": GrowingConfig, "cells": CellsModelConfig, "maze": MazeNetConfig}


@pytest.mark.parametrize("kind,name", [*[("task", n) for n in ("mnist", "grow", "cells", "maze", "cnn")],
                                       *[("model", n) for n in ("mnist", "grow", "cells", "maze")]])
def test_every_config_refuses_unknown_keys(kind, name):
    cls = (_configs() if kind == "task" else _model_configs())[name]
    assert cls.from_dict({}) == cls()
    with pytest.raises(ConfigError, match=r"unknown .*keys \['not_an_option'\]; valid keys: "):
        cls.from_dict({"not_an_option": 1})


def test_every_from_dict_goes_through_the_strict_loader():
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "from_dict":
                calls = {getattr(n.func, "id", getattr(n.func, "attr", None)) for n in ast.walk(node)
                         if isinstance(n, ast.Call)}
                found.append(str(path.relative_to(SRC)))
                assert "load_dataclass" in calls, f"{path}: from_dict must call load_dataclass"
    assert len(found) >= 5, found


class _Built(Exception):
    """Raised by the stand-in for `fit`: the config is built, nothing trains."""


def _train_config(monkeypatch, argv):
    """(the task config as a dict, the explicitly given options, the run folder) `deqnca ARGV` would train."""
    import deqnca.engine.trainer as trainer

    def fake_fit(task, out, changed=None, **kw):
        raise _Built(dataclasses.asdict(task.cfg), sorted(changed or []), str(out))

    monkeypatch.setattr(trainer, "fit", fake_fit)
    with pytest.raises(_Built) as e:
        main([*argv, "--device", "cpu"])
    return e.value.args


# the --config files of the cases in data/preset_cli_configs.json
CONFIG_FILES = {
    "mnist.json": {"train": {"lr": 0.01, "epochs": 3}, "model": {"solver": "fixed_point", "state_channels": 8}},
    "mnist_run.json": {"task": "mnist", "train": {"lr": 0.02, "model": {"ignored": 1}},
                       "model": {"rule": "contractive_tanh", "solver_kw": {"max_iter": 5}}},
    "grow.json": {"train": {"steps": 50, "trainer": "implicit", "phantom_k": 4}},
    "cells.json": {"train": {"steps": 50, "model": "consensus"}},
    "maze.json": {"train": {"epochs": 3}, "model": {"width": 8, "train_iters": 7}},
}
# recorded with the dict presets (PRESETS dicts, RECIPES, MODEL_DEFAULTS) before they became functions: what each
# command trains (the options that differ from its config's defaults), the options given explicitly, the run folder
CLI_CASES = json.loads((Path(__file__).parent / "data" / "preset_cli_configs.json").read_text())


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_train_commands_build_the_configs_they_built_before(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, data in CONFIG_FILES.items():
        (tmp_path / name).write_text(json.dumps(data))
    expected = CLI_CASES[case]
    cfg, given, out = _train_config(monkeypatch, [a.replace("{tmp}", str(tmp_path)) for a in expected["argv"]])
    defaults = json.loads(json.dumps(dataclasses.asdict(_configs()[expected["task"]]())))
    assert {k: v for k, v in cfg.items() if defaults[k] != v} == expected["differs"]
    assert (given, out) == (expected["given"], expected["out"])


def test_the_window_recipe_still_needs_the_implicit_trainer(monkeypatch, capsys):
    assert main(["grow", "train", "--recipe", "window", "--device", "cpu"]) == 2
    assert "--recipe window sets the equilibrium trainer's options: use it with --trainer implicit" in \
        capsys.readouterr().err
    cfg, given, _ = _train_config(monkeypatch, ["grow", "train", "--recipe", "window", "--set", "trainer=implicit"])
    assert cfg["trainer"] == "implicit" and cfg["phantom_k"] == 32 and given == ["trainer"]
