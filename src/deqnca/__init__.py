"""deqnca: a spatial deep equilibrium model is a neural cellular automaton run to its fixed point.

The public API, importable from the package root (loaded on first use, so `import deqnca` is cheap):

- the model and its five parts, each with a registry: `EquilibriumModel`, `ModelConfig`;
  `RULES`, `CONDITIONINGS`, `SOLVERS`, `GRADIENTS`, `READOUTS` and their `register_*` functions;
- training: `fit`, `Task`, `TrainConfig`, `Batch`, `TASKS`, `register_task`; the built-in tasks
  `MnistTask`, `GrowTask`, `MazeTask` with their configs and the MNIST `PRESETS`;
- checkpoints and evaluation: `load_model`, `save_checkpoint`, `read_checkpoint`, `evaluate`.

Examples:
    >>> import deqnca
    >>> model = deqnca.EquilibriumModel(deqnca.preset("equilibrium")["model"])
"""
from __future__ import annotations

import importlib

from ._version import __version__

_EXPORTS = {
    "EquilibriumModel": "model", "ModelConfig": "model", "count_parameters": "model",
    "Registry": "registry",
    "RULES": "rules", "make_rule": "rules",
    "CONDITIONINGS": "conditioning", "make_conditioning": "conditioning",
    "SOLVERS": "solvers", "SolveStats": "solvers", "get_solver": "solvers", "register_solver": "solvers",
    "rollout": "solvers", "fixed_point": "solvers", "anderson": "solvers", "broyden": "solvers",
    "GRADIENTS": "gradients", "make_gradient": "gradients", "BPTT": "gradients", "Implicit": "gradients",
    "Phantom": "gradients",
    "READOUTS": "readout",
    "ConfigError": "configs", "load_dataclass": "configs", "option": "configs",
    "evaluate": "evaluation", "residual_summary": "evaluation",
    "load_mnist": "data.idx",
    "TASKS": "engine.trainer", "Task": "engine.trainer", "TrainConfig": "engine.options", "Batch": "engine.trainer",
    "fit": "engine.trainer",
    "CheckpointError": "engine.checkpoint", "load_model": "engine.checkpoint", "save_checkpoint": "engine.checkpoint",
    "read_checkpoint": "engine.checkpoint", "load_grow_checkpoint": "engine.checkpoint",
    "load_maze_model": "engine.checkpoint",
    "MnistTask": "tasks.mnist", "MnistConfig": "tasks.mnist_config", "PRESETS": "tasks.mnist_config",
    "preset": "tasks.mnist_config",
    "GrowTask": "tasks.grow", "GrowConfig": "tasks.grow_config", "MazeTask": "tasks.maze",
    "MazeConfig": "tasks.maze_config",
}
_REGISTERS = {"register_rule": ("rules", "RULES"), "register_conditioning": ("conditioning", "CONDITIONINGS"),
              "register_gradient": ("gradients", "GRADIENTS"), "register_readout": ("readout", "READOUTS"),
              "register_task": ("engine.trainer", "TASKS")}
__all__ = ["__version__", *_EXPORTS, *_REGISTERS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        if _EXPORTS[name] == "engine.trainer":
            importlib.import_module(".tasks", __name__).load_builtin_tasks()   # they register themselves
        value = getattr(module, name)
    elif name in _REGISTERS:
        module_name, registry = _REGISTERS[name]
        if module_name == "engine.trainer":
            importlib.import_module(".tasks", __name__).load_builtin_tasks()
        value = getattr(importlib.import_module(f".{module_name}", __name__), registry).register
    else:
        raise AttributeError(f"module 'deqnca' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
