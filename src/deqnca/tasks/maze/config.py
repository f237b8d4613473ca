"""The maze task's options (`MazeConfig`) and presets (`PRESETS`), torch-free.

A preset is a function of no arguments returning a whole run's `MazeConfig`, its `model` the solver-net's
config (`MazeNetConfig` fields); ``deqnca maze train --model NAME`` starts from preset NAME, and explicit
options override it (docs/mazes.md):

dt        Bansal et al.'s DT-recall: a projection of the maze, 30 recall steps, BPTT.
deq       the same rule bounded and solved to its fixed point, trained by the phantom gradient.
geodesic  a max-plus flood with a unique fixed point for any weights, reached exactly.
trace     floods plus traces back down them on the layout's grid: exact shortest paths with loops.
"""
from __future__ import annotations

from dataclasses import dataclass

from deqnca.core.configs import option
from deqnca.core.registry import Registry
from deqnca.engine.options import TrainConfig
from deqnca.tasks.maze import generate as mazes
from deqnca.tasks.maze import loops
from deqnca.tasks.maze.model_config import MazeNetConfig

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
    generator: str = option(mazes.DEFAULT_GENERATOR, "maze distribution(s) of the training and held-out mazes: a "
                            "maze spec (dfs, prim, kruskal, wilson, division, GEN+loops=F, percolation+p=P, each "
                            "optionally +anywhere), several separated by commas, or mix (the five perfect "
                            "generators); several are in equal shares, mixed within each batch")

    def __post_init__(self):
        loops.check_mix(self.generator)        # a one-line error naming the spec syntax


PRESETS = Registry("maze preset", "a function of no arguments returning a MazeConfig")


def _with_model(**model) -> MazeConfig:
    return MazeConfig.from_dict({"model": MazeNetConfig.from_dict(model).to_dict()})


@PRESETS.register("dt")
def dt() -> MazeConfig:
    """Bansal et al.'s DT-recall: the state starts as a projection of the maze and is rolled out, trained by
    BPTT.

    Example:
        >>> dt().model["solver"]
        'rollout'
    """
    return _with_model(model="dt", init="projection", solver="rollout", gradient="bptt")


@PRESETS.register("deq")
def deq() -> MazeConfig:
    """The maze DEQ: the recall rule, bounded, solved to its fixed point from a mixed start. The phantom gradient
    takes 10 unrolled steps from the (detached) equilibrium (5x5 mazes, 630 steps, 3 seeds: 55-95% solved vs
    8-71% with 5); implicit works too (``--set gradient=implicit``) but its backward fixed point needs the
    forward one converged.

    Example:
        >>> deq().model["gradient_kw"]
        {'k': 10, 'tau': 1.0}
    """
    return _with_model(model="deq", init="mixed", solver="fixed_point", gradient="phantom",
                       gradient_kw={"k": 10, "tau": 1.0})


@PRESETS.register("geodesic")
def geodesic() -> MazeConfig:
    """The max-plus flood (tasks/maze/geodesic.py): a unique fixed point for any weights, reached exactly (residual
    0) from any state. The cap of the random training budget (T/2 .. 2T) lies above the ~180 steps the largest
    13x13 maze needs, so every training solve converges (docs/mazes.md, "An equilibrium solver that
    generalises"); tol 1e-12 lies below the smallest relative step a float32 state can take, so "converged"
    means exactly at the fixed point.

    Example:
        >>> geodesic().model["train_iters"]
        200
    """
    return _with_model(model="geodesic", init="mixed", solver="fixed_point", gradient="phantom",
                       gradient_kw={"k": 10, "tau": 1.0}, train_iters=200, tol=1e-12)


@PRESETS.register("trace")
def trace() -> MazeConfig:
    """Floods and their traces (tasks/maze/trace.py) on the layout's grid: a unique fixed point, reached exactly,
    that marks every cell of a cheapest start-to-goal walk — the shortest path, loops or not. Trained like the
    geodesic model (phantom gradient from the exact fixed point; budget T/2 .. 2T above what a 13x13 maze needs).

    Example:
        >>> trace().model["model"]
        'trace'
    """
    return _with_model(model="trace", width=4, init="mixed", solver="fixed_point", gradient="phantom",
                       gradient_kw={"k": 10, "tau": 1.0}, train_iters=200, tol=1e-12)
