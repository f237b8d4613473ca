"""The maze task's options (`MazeConfig`), torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from deqnca.core.configs import option
from deqnca.engine.options import TrainConfig
from deqnca.tasks.maze import generate as mazes

MIX = "mix"      # MazeConfig.generator: every generator of mazes.GENERATORS in equal shares


@dataclass
class MazeConfig(TrainConfig):
    """Options of the maze task (the engine's with Bansal et al.'s defaults, plus these)."""
    model: dict = option({}, "maze model config (MazeNetConfig fields; a preset fills it)", flag=False)
    train_size: int = option(mazes.TRAIN_SIZE, "maze size trained on (and of the held-out mazes)", min=3,
                             max=mazes.MAX_SIZE)
    train_sizes: list = option([], "further maze sizes trained on, each a set of train_count mazes; every batch "
                               "holds one size (JSON list, e.g. [5, 7, 11, 13])")
    train_count: int = option(mazes.DEFAULT_COUNTS["train"], "training mazes", min=1, max=mazes.MAX_COUNT)
    epochs: int = option(50, "passes over the training mazes")
    optimizer: str = option("adamw", "optimiser", choices=("sgd", "adam", "adamw"))
    lr: float = option(1e-3, "learning rate")
    weight_decay: float = option(2e-4, "AdamW weight decay")
    warmup_steps: int = option(100, "linear warm-up steps")
    schedule: str = option("cosine", "learning-rate schedule", choices=("constant", "cosine", "step"))
    grad_clip: float = option(1.0, "max gradient norm")
    alpha: float = option(0.01, "DT progressive-loss weight (Bansal et al.'s maze setting)", min=0, max=1)
    residual_weight: float = option(0.0, "DEQ: + weight * mean relative residual^2 at the trained state",
                                   min=0)
    val_count: int = option(200, "held-out test mazes of the training size evaluated after each epoch",
                           min=1, max=mazes.MAX_COUNT)
    cache: str = option("", "maze cache folder (default ~/.cache/deqnca/mazes)", flag=False)
    generator: str = option(mazes.DEFAULT_GENERATOR, "maze distribution of the training and held-out mazes "
                            "(mix: equal shares of every generator, mixed within each batch)",
                            choices=(*mazes.GENERATORS, MIX))
