"""The maze solver-nets' config (`MazeNetConfig`), the solver-nets (`NETS`) and the evaluation's default test
counts, torch-free (the command line reads them without importing torch). The presets (dt, deq, geodesic) are
whole run configs: `deqnca.tasks.maze.config.PRESETS`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from deqnca.core.configs import load_dataclass, option
from deqnca.engine.options import MAX_ITERATIONS, MAX_SIZE

NETS = ("dt", "deq", "geodesic", "trace")        # MazeNetConfig.model: the kinds of solver-net


@dataclass
class MazeNetConfig:
    """A maze solver-net: which model (dt, deq, geodesic, trace), its sizes, initial state, solver and gradient.

    Example:
        >>> MazeNetConfig.from_dict({"model": "deq", "init": "mixed"}).width
        32
    """
    model: str = "dt"                 # "dt" (Bansal et al.'s DT-recall), "deq", "geodesic" or "trace"
    width: int = option(32, "channels of the state", min=1, max=MAX_SIZE)
    blocks: int = option(2, "residual blocks of the rule", min=1, max=MAX_SIZE)
    init: str = "projection"          # initial state: "projection" (DT), "zeros" / "mixed" (DEQ)
    solver: str = "rollout"
    gradient: str = "bptt"
    gradient_kw: dict = field(default_factory=dict)
    # DT: max iterations; DEQ: centre of the random iteration budget
    train_iters: int = option(30, "training iterations", min=1, max=MAX_ITERATIONS)
    # DEQ: relative residual at which a maze counts as converged
    tol: float = option(1e-3, "convergence tolerance", min=0)
    # DEQ: states lie in [0, bound) (rules/recall.py: 1 saturates)
    bound: float = option(10.0, "bound of the states", min=0, max=1e6)
    rule_kw: dict = field(default_factory=dict)   # geodesic, trace: the rule's options (cost_min, cost_max)
    # geodesic, trace: "d4" reads out the mean over the 8 rotations/reflections of the (equivariant) fixed point
    readout_symmetry: str = "none"

    @classmethod
    def from_dict(cls, d: dict) -> MazeNetConfig:
        """The config from a plain dict (a checkpoint's ``model_config``); unknown keys are an error.

        Example:
            >>> MazeNetConfig.from_dict({"model": "deq", "width": 8}).width
            8
        """
        return load_dataclass(cls, d, "maze model config")

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)


# mazes per size evaluated by default (`deqnca maze eval --limit-per-size`)
DEFAULT_LIMITS = {9: 1000, 13: 1000, 19: 1000, 33: 500, 59: 200, 101: 50, 201: 20}
