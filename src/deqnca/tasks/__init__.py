"""Tasks: what is particular to each training problem, one file each, trained by the one engine.
Importing this package registers the built-in tasks in `deqnca.engine.TASKS`."""
from . import cells, cnn, grow, maze, mnist  # noqa: F401  (registration)
from .grow import GrowConfig, GrowTask
from .maze import MazeConfig, MazeTask
from .mnist import PRESETS, MnistConfig, MnistTask, preset

__all__ = ["GrowConfig", "GrowTask", "MazeConfig", "MazeTask", "MnistConfig", "MnistTask", "PRESETS", "preset"]
