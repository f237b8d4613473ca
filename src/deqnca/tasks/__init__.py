"""Tasks: what is particular to each training problem, one folder each (`tasks/<name>/task.py` and the
modules beside it), trained by the one engine. `load_builtin_tasks()` registers the built-in tasks in
`deqnca.engine.TASKS` and their model kinds in `deqnca.core.model.MODELS` (the package root does it when a
training name is first used, and `load`, which is `deqnca.load`, before it reads a checkpoint). Each task's
options and presets live in a torch-free `config.py` in its folder, so the command line builds its flags
without importing torch; the names below are loaded on first use."""
from __future__ import annotations

import importlib
import warnings

BUILTIN_TASKS = ("cells", "cnn", "grow", "maze", "mnist")
_EXPORTS = {"GrowConfig": "grow.config", "GrowTask": "grow.task", "MazeConfig": "maze.config", "MazeTask": "maze.task",
            "MnistConfig": "mnist.config", "MnistTask": "mnist.task", "PRESETS": "mnist.config",
            "preset": "mnist.config"}
__all__ = ["GrowConfig", "GrowTask", "MazeConfig", "MazeTask", "MnistConfig", "MnistTask", "PRESETS", "preset",
           "load_builtin_tasks", "load"]


def load_builtin_tasks() -> None:
    """Import the built-in task modules, which register themselves in `deqnca.engine.TASKS` and their model
    kinds in `deqnca.core.model.MODELS`."""
    for name in BUILTIN_TASKS:
        importlib.import_module(f".{name}.task", __name__)


def load(name_or_path, device="cpu", kind: str | None = None):
    """(model, meta): the model of any checkpoint — every shipped model and every model trained by a task,
    built-in or registered — in eval mode on `device`; the checkpoint's kind says which `CellularModel`.

    Args:
        name_or_path: a checkpoint (``runs/x/last``, with or without suffix) or a shipped model's name
            (``mnist-essay``, ``grow/lizard-equilibrium``, ``maze/geodesic``, ``cells/consensus``; all of
            them: `deqnca.core.resources.shipped_names`).
        device: where the model goes.
        kind: the kind the caller needs (``"mnist"``, ``"cells"``, ``"grow"``, ``"maze"`` or a registered
            one); a checkpoint of another kind is a one-line error naming both.

    Returns:
        (the model, the checkpoint's JSON record).

    Examples:
        >>> model, meta = deqnca.load("mnist-equilibrium")  # doctest: +SKIP
        >>> r = deqnca.rollout(model, x, steps=100)  # doctest: +SKIP
    """
    from deqnca.engine.checkpoint import load as load_checkpoint

    load_builtin_tasks()          # the built-in kinds register with their task modules
    return load_checkpoint(name_or_path, device, kind)


def _deprecated(name: str, kind: str, path, device):
    warnings.warn(f"deqnca.{name} is deprecated; use deqnca.load(path, kind={kind!r})", DeprecationWarning,
                  stacklevel=3)
    return load(path, device, kind)


def load_model(path, device="cpu"):
    """Deprecated: `deqnca.load(path, device, kind="mnist")`, an MNIST classifier (`EquilibriumModel`)."""
    return _deprecated("load_model", "mnist", path, device)


def load_grow_checkpoint(path, device="cpu"):
    """Deprecated: `deqnca.load(path, device, kind="grow")`, a growing NCA (`GrowModel`)."""
    return _deprecated("load_grow_checkpoint", "grow", path, device)


def load_maze_model(path, device="cpu"):
    """Deprecated: `deqnca.load(path, device, kind="maze")`, a maze solver-net (`MazeSolverNet`)."""
    return _deprecated("load_maze_model", "maze", path, device)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deqnca.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
