"""The engine: the one trainer (`fit`), its `Task` protocol and `TrainConfig`, checkpoints, torchrun/DDP,
devices, and the task registry. It imports only the core (rules, solvers, model, data).

Names are loaded on first use, so that `deqnca.engine.options` (the torch-free `TrainConfig`) can be
imported without torch."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint", "load": "checkpoint", "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainConfig": "options",
    "TASKS": "task", "Batch": "task", "Task": "task", "Meter": "meter", "fit": "trainer", "lr_at": "trainer",
    "make_optimizer": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deqnca.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(__all__) | set(globals()))
