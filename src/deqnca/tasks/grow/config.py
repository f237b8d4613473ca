"""The growing-NCA task's options (`GrowConfig`) and presets (`PRESETS`), torch-free.

A preset is a function of no arguments returning a whole run's `GrowConfig`; ``deqnca grow train --recipe
NAME`` starts from preset NAME, and explicit options override it. The presets set the equilibrium trainer's
options (use them with ``--trainer implicit``):

equilibrium  `GrowConfig`'s defaults: the paper's settings; with ``--trainer implicit``, solve to the fixed
             point and take the phantom gradient there.
window       the windowed phantom gradient that grows the lizard (docs/grow.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from deqnca.core.configs import option
from deqnca.core.registry import Registry
from deqnca.engine.options import MAX_COUNT, MAX_ITERATIONS, MAX_SIZE, TrainConfig

VARIANTS = ("growing", "persistent", "regenerating")
_EQUILIBRIUM_KEYS = ("solver", "solver_iter", "solver_tol", "gradient", "b_solver", "b_max_iter", "b_tol", "phantom_k",
                     "residual_weight", "jac_weight", "restart_noise", "spectral_weight", "spectral_target",
                     "spectral_iters", "phantom_map")


@dataclass
class GrowConfig(TrainConfig):
    """Options of the growing-NCA task (the engine's, with the paper's defaults, plus these)."""
    epochs: int = option(1, "passes of `steps` steps (one)", flag=False)
    steps: int = option(8000, "optimizer steps", min=1, max=MAX_COUNT)
    batch_size: int = option(8, "samples per step", min=1, max=MAX_COUNT)
    optimizer: str = option("adam", "optimiser", choices=("sgd", "adam", "adamw"))
    lr: float = option(2e-3, "learning rate")
    schedule: str = option("step", "learning-rate schedule", choices=("constant", "cosine", "step"))
    lr_decay_at: int = option(2000, "the step where the rate drops", min=0)
    log_every: int = option(10, "steps between records in metrics.jsonl", min=0)
    trainer: str = option("bptt", "bptt, or implicit (the equilibrium trainer)", choices=("bptt", "implicit"))
    variant: str = option("persistent", "how batches use the pool", choices=VARIANTS)
    target: str = option("lizard", "lizard, small or a path to an RGBA image")
    pad: int = option(0, "transparent cells added around a target image", min=0, max=MAX_SIZE)
    pool_size: int = option(1024, "states in the pool", min=1, max=MAX_COUNT)
    min_steps: int = option(64, "fewest rollout steps per batch (BPTT's horizon / growth before the solver)",
                           min=1, max=MAX_ITERATIONS)
    max_steps: int = option(96, "most rollout steps per batch", min=1, max=MAX_ITERATIONS)
    damaged: int = option(3, "regenerating: lowest-loss samples damaged per batch", min=0)
    seeds: int = option(1, "pool variants: highest-loss samples restarted from the seed per batch",
                       min=0)
    init_from: str = option("", "start from this grow checkpoint's rule weights (fresh optimizer and pool)")
    # equilibrium trainer: Picard steps without early stopping (the trained rule's residual stays at ~1e-2)
    solver: str = option("rollout", "solver of the expected map")
    solver_iter: int = option(32, "solver steps", min=1, max=MAX_ITERATIONS)
    solver_tol: float = option(1e-3, "solver tolerance", min=0)
    # phantom, not implicit: at the grown pattern the Jacobian's spectral radius sits at ~1 (docs/grow.md)
    gradient: str = option("phantom", "implicit or phantom", choices=("implicit", "phantom"))
    b_solver: str = option("fixed_point", "adjoint solver (implicit gradient)")
    b_max_iter: int = option(32, "adjoint solver steps", min=1, max=MAX_ITERATIONS)
    b_tol: float = option(1e-4, "adjoint solver tolerance", min=0)
    phantom_k: int = option(8, "differentiated steps of the phantom gradient", min=1,
                            max=MAX_ITERATIONS)
    phantom_map: str = option("expected", "what the solver and phantom steps iterate",
                              choices=("expected", "stochastic"))
    residual_weight: float = option(1.0, "weight of ||f(z*) - z*||^2", min=0)
    jac_weight: float = option(0.0, "weight of the Jacobian regulariser", min=0)
    restart_noise: float = option(0.0, "std of noise on live cells before the phantom steps", min=0)
    spectral_weight: float = option(0.0, "weight of the hinge on the spectral radius of df/dz above spectral_target",
                                   min=0)
    spectral_target: float = option(0.95, "radius above which that penalty acts", min=0)
    spectral_iters: int = option(8, "power iterations per step for that penalty", min=1,
                                 max=MAX_ITERATIONS)
    alive_surrogate: float = option(0.0, "tau > 0: the alive mask passes a sigmoid's gradient", min=0)
    divergence_rel: float = option(0.1, "a solve ending above this relative residual counts as diverged",
                                  min=0)
    restore_fraction: float = option(0.5, "more of the batch diverging or dying out than this: restore",
                                    min=0, max=1)
    spectral_every: int = option(100, "steps between spectral-radius measurements; 0 = never", min=0)
    rule: dict = option({}, "GrowingConfig overrides (channels, hidden, fire_rate)")

    def checkpoint_interval(self) -> int:
        """Steps between checkpoints: `checkpoint_every`, or a tenth of the run (its one epoch) if 0."""
        return self.checkpoint_every or max(1, self.steps // 10)


PRESETS = Registry("grow preset", "a function of no arguments returning a GrowConfig")


@PRESETS.register("equilibrium")
def equilibrium() -> GrowConfig:
    """`GrowConfig`'s defaults: the paper's settings and, with ``trainer="implicit"``, the first equilibrium
    recipe (solve to the fixed point, phantom gradient there).

    Example:
        >>> equilibrium().solver_iter
        32
    """
    return GrowConfig()


@PRESETS.register("window")
def window() -> GrowConfig:
    """The windowed phantom gradient (docs/grow.md): per visit of a pool state 1..16 undifferentiated steps
    and one solver step, then 32 differentiated steps of the stochastic rule.

    Example:
        >>> window().phantom_k
        32
    """
    return GrowConfig.from_dict({"min_steps": 1, "max_steps": 16, "solver_iter": 1, "phantom_k": 32,
                                 "residual_weight": 0.0, "pool_size": 128, "divergence_rel": 1e9,
                                 "phantom_map": "stochastic"})


def sets_equilibrium_options(cfg: GrowConfig) -> bool:
    """Whether `cfg` changes any of the equilibrium trainer's options from `GrowConfig`'s defaults (a preset
    that does is for ``trainer="implicit"``).

    Example:
        >>> sets_equilibrium_options(window()), sets_equilibrium_options(equilibrium())
        (True, False)
    """
    defaults = GrowConfig()
    return any(getattr(cfg, k) != getattr(defaults, k) for k in _EQUILIBRIUM_KEYS)
