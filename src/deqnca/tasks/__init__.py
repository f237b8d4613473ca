"""Tasks: what is particular to each training problem, one folder each (`tasks/<name>/task.py` and the
modules beside it), trained by the one engine. `load_builtin_tasks()` registers the built-in tasks in
`deqnca.engine.TASKS` (the package root does it when a training name is first used). Each task's options
and presets live in a torch-free `config.py` in its folder, so the command line builds its flags without
importing torch; the names below are loaded on first use."""
from __future__ import annotations

import importlib

BUILTIN_TASKS = ("cells", "cnn", "grow", "maze", "mnist")
_EXPORTS = {"GrowConfig": "grow.config", "GrowTask": "grow.task", "MazeConfig": "maze.config", "MazeTask": "maze.task",
            "MnistConfig": "mnist.config", "MnistTask": "mnist.task", "PRESETS": "mnist.config",
            "preset": "mnist.config"}
__all__ = ["GrowConfig", "GrowTask", "MazeConfig", "MazeTask", "MnistConfig", "MnistTask", "PRESETS", "preset",
           "load_builtin_tasks"]


def load_builtin_tasks() -> None:
    """Import the built-in task modules, which register themselves in `deqnca.engine.TASKS`."""
    for name in BUILTIN_TASKS:
        importlib.import_module(f".{name}.task", __name__)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deqnca.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
