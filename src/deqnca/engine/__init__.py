"""The engine: the one trainer (`fit`), its `Task` protocol and `TrainConfig`, checkpoints, torchrun/DDP,
devices, and the task registry. It imports only the core (rules, solvers, model, data)."""
from .checkpoint import (
           CheckpointError,
           load_grow_checkpoint,
           load_maze_model,
           load_model,
           read_checkpoint,
           save_checkpoint,
)
from .trainer import TASKS, Batch, Task, TrainConfig, fit, lr_at, make_optimizer

__all__ = ["TASKS", "Batch", "CheckpointError", "Task", "TrainConfig", "fit", "load_grow_checkpoint",
           "load_maze_model", "load_model", "lr_at", "make_optimizer", "read_checkpoint", "save_checkpoint"]
