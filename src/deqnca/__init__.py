"""deqnca: a spatial deep equilibrium model is a neural cellular automaton run to its fixed point.

The public API, importable from the package root (loaded on first use, so `import deqnca` is cheap):

- one model protocol: every model kind is a `CellularModel` (initial state, step map, read-out; solve on
  top), registered in `MODELS` under the kind its checkpoints record; `load` reads any checkpoint, shipped
  or trained, into its model, and `rollout` is the NCA view of every kind (states, residuals, read-outs);
- the MNIST classifier and its five parts, each with a registry: `EquilibriumModel`, `ModelConfig`;
  `RULES`, `CONDITIONINGS`, `GRADIENTS`, `READOUTS` and their `register_*` functions; the solvers
  (`rollout`, `fixed_point`, `anderson`, `broyden`, `get_solver`, `SOLVERS`, `register_solver`) are
  `deqnca.solvers.<name>`;
- training: `fit`, `Task`, `TrainConfig`, `Batch`, `TASKS`, `register_task`; the built-in tasks
  `MnistTask`, `GrowTask`, `MazeTask` with their configs; the MNIST `PRESETS` (a registry of functions
  returning an `MnistConfig`) and `preset` (one of them with options changed);
- checkpoints and evaluation: `load`, `save_checkpoint`, `read_checkpoint`, `evaluate` (`load_model`,
  `load_grow_checkpoint` and `load_maze_model` are deprecated aliases of `load`).

Examples:
    >>> import deqnca
    >>> model = deqnca.EquilibriumModel(deqnca.preset("equilibrium").model)
    >>> model, meta = deqnca.load("maze/geodesic")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib

from ._version import __version__

_EXPORTS = {
    "EquilibriumModel": "tasks.mnist.model", "ModelConfig": "tasks.mnist.model",
    "count_parameters": "tasks.mnist.model",
    "CellularModel": "core.model", "MODELS": "core.model", "Rollout": "core.nca", "rollout": "core.nca",
    "load": "tasks", "load_model": "tasks", "load_grow_checkpoint": "tasks", "load_maze_model": "tasks",
    "Registry": "core.registry",
    "RULES": "core.rules", "make_rule": "core.rules",
    "CONDITIONINGS": "core.conditioning", "make_conditioning": "core.conditioning",
    "GRADIENTS": "core.gradients", "make_gradient": "core.gradients", "BPTT": "core.gradients",
    "Implicit": "core.gradients",
    "Phantom": "core.gradients",
    "READOUTS": "core.readout",
    "ConfigError": "core.configs", "load_dataclass": "core.configs", "option": "core.configs",
    "evaluate": "tasks.mnist.evaluate", "residual_summary": "tasks.mnist.evaluate",
    "load_mnist": "data.idx",
    "TASKS": "engine.task", "Task": "engine.task", "TrainConfig": "engine.options", "Batch": "engine.task",
    "fit": "engine.trainer",
    "CheckpointError": "engine.checkpoint", "save_checkpoint": "engine.checkpoint",
    "read_checkpoint": "engine.checkpoint",
    "MnistTask": "tasks.mnist.task", "MnistConfig": "tasks.mnist.config", "PRESETS": "tasks.mnist.config",
    "preset": "tasks.mnist.config",
    "GrowTask": "tasks.grow.task", "GrowConfig": "tasks.grow.config", "MazeTask": "tasks.maze.task",
    "MazeConfig": "tasks.maze.config",
}
_REGISTERS = {"register_rule": ("core.rules", "RULES"), "register_conditioning": ("core.conditioning", "CONDITIONINGS"),
              "register_gradient": ("core.gradients", "GRADIENTS"), "register_readout": ("core.readout", "READOUTS"),
              "register_task": ("engine.task", "TASKS")}
__all__ = ["__version__", *_EXPORTS, *_REGISTERS]


def __getattr__(name: str):
    if name == "solvers":                     # `deqnca.solvers.<name>`: the solver functions and their registry
        value = importlib.import_module(".core.solvers", __name__)
    elif name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        if _EXPORTS[name] == "engine.trainer" or name == "MODELS":
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
    return sorted([*__all__, "solvers"])
