"""The maze solver-nets' config (`MazeNetConfig`), the presets (dt, deq, geodesic) and the evaluation's default test
counts, torch-free (the command line reads them without importing torch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class MazeNetConfig:
    """A maze solver-net: which model (dt, deq, geodesic), its sizes, initial state, solver and gradient.

    Example:
        >>> MazeNetConfig.from_dict({"model": "deq", "init": "mixed"}).width
        32
    """
    model: str = "dt"                 # "dt" (Bansal et al.'s DT-recall), "deq" or "geodesic"
    width: int = 32
    blocks: int = 2
    init: str = "projection"          # initial state: "projection" (DT), "zeros" / "mixed" (DEQ)
    solver: str = "rollout"
    gradient: str = "bptt"
    gradient_kw: dict = field(default_factory=dict)
    train_iters: int = 30             # DT: max iterations; DEQ: centre of the random iteration budget
    tol: float = 1e-3                 # DEQ: relative residual at which a maze counts as converged
    bound: float = 10.0               # DEQ: states lie in [0, bound) (rules/recall.py: 1 saturates)
    rule_kw: dict = field(default_factory=dict)   # geodesic: GeodesicRule options (cost_min, cost_max)
    # geodesic: "d4" reads out the mean over the 8 rotations/reflections of the (equivariant) fixed point
    readout_symmetry: str = "none"

    @classmethod
    def from_dict(cls, d: dict) -> MazeNetConfig:
        """The config from a plain dict (a checkpoint's ``model_config``); unknown keys are an error."""
        from deqnca.core.configs import load_dataclass

        return load_dataclass(cls, d, what="maze model config")

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)


PRESETS = {
    "dt": dict(model="dt", init="projection", solver="rollout", gradient="bptt"),
    # phantom gradient: 10 unrolled steps from the (detached) equilibrium (5x5 mazes, 630 steps,
    # 3 seeds: 55-95% solved vs 8-71% with 5); implicit works too (--set gradient=implicit) but its
    # backward fixed point needs the forward one converged
    "deq": dict(model="deq", init="mixed", solver="fixed_point", gradient="phantom",
                gradient_kw={"k": 10, "tau": 1.0}),
    # max-plus flood (rules/geodesic.py): a unique fixed point for any weights, reached exactly (residual 0)
    # from any state; the cap of the random training budget (T/2 .. 2T) lies above the ~180 steps the largest
    # 13x13 maze needs, so every training solve converges (docs/mazes.md, "An equilibrium solver that
    # generalises"); tol 1e-12 lies below the smallest relative step a float32 state can take, so "converged"
    # means exactly at the fixed point
    "geodesic": dict(model="geodesic", init="mixed", solver="fixed_point", gradient="phantom",
                     gradient_kw={"k": 10, "tau": 1.0}, train_iters=200, tol=1e-12),
}
# mazes per size evaluated by default (`deqnca maze eval --limit-per-size`)
DEFAULT_LIMITS = {9: 1000, 13: 1000, 19: 1000, 33: 500, 59: 200, 101: 50, 201: 20}
