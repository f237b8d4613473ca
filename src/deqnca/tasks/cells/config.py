"""The self-classifying task's options (`CellsConfig`), torch-free: the command line builds its flags from
them without importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from deqnca.core.configs import option
from deqnca.engine.options import TrainConfig

# what `--model equilibrium` changes in the defaults (explicit options win); the article's are the fields'
MODEL_DEFAULTS = {"article": {},
                  "equilibrium": {"loss": "ce", "batch_size": 32, "lr": 1e-2, "normalise_gradients": False,
                                  "grad_clip": 1.0, "schedule": "cosine", "steps": 20000}}
# the consensus model: the equilibrium's, with room for the flood (a digit's width in steps) in both solves
MODEL_DEFAULTS["consensus"] = {**MODEL_DEFAULTS["equilibrium"], "solver_iter": 120, "b_max_iter": 80}


@dataclass
class CellsConfig(TrainConfig):
    """Options of the self-classifying task (the engine's, with the article's defaults, plus these)."""
    epochs: int = option(1, "passes of `steps` steps (one)", flag=False)
    model: str = option("article", "article (BPTT, the Distill recipe), equilibrium (a contraction solved to "
                        "its fixed point) or consensus (the contraction plus a max-plus flood of evidence)",
                        choices=("article", "equilibrium", "consensus"))
    steps: int = option(100000, "optimizer steps")
    batch_size: int = option(16, "digits per step")
    optimizer: str = option("adam", "optimiser", choices=("sgd", "adam", "adamw"))
    lr: float = option(1e-3, "learning rate")
    schedule: str = option("step", "learning-rate schedule", choices=("constant", "cosine", "step"))
    lr_decay_at: int = option(30000, "the step where the rate drops ×lr_decay")
    checkpoint_every: int = option(500, "steps between checkpoints")
    log_every: int = option(50, "steps between training records in metrics.jsonl")
    size: int = option(28, "digit side: 28, or 14 (2×2 averaged, for quick runs)", choices=(28, 14))
    train_images: int = option(0, "training digits used (0: all 60,000)")
    loss: str = option("l2", "per-cell loss: l2 on one-hot labels (the article's) or ce", choices=("l2", "ce"))
    normalise_gradients: bool = option(True, "divide each parameter's gradient by its norm (the article's)")
    rollout_steps: int = option(20, "article: CA steps per batch (the BPTT horizon)")
    pool_size: int = option(160, "article: states in the pool (0: every batch from fresh digits)")
    fresh: int = option(4, "article: pool samples per batch restarted from a new digit")
    mutate: int = option(4, "article: pool samples per batch given a new digit, state kept where it is alive")
    solver: str = option("fixed_point", "equilibrium: forward solver (any registered one)")
    solver_iter: int = option(60, "equilibrium: most solver steps")
    solver_tol: float = option(1e-4, "equilibrium: relative residual the solver stops at")
    gradient: str = option("implicit", "equilibrium: implicit (IFT) or phantom", choices=("implicit", "phantom"))
    b_max_iter: int = option(40, "equilibrium, implicit: adjoint solver steps")
    b_tol: float = option(1e-4, "equilibrium, implicit: adjoint tolerance")
    phantom_k: int = option(8, "equilibrium, phantom: differentiated steps")
    eval_every: int = option(1000, "steps between evaluations on held-out digits (0: at the end only)")
    eval_images: int = option(128, "held-out (test-set) digits per evaluation")
    eval_marks: list = option([20, 80, 200], "steps at which an evaluation records the metrics")
    rule: dict = option({}, "the rule's settings (keyword arguments of tasks/cells/rule_*.py)")

    @classmethod
    def for_model(cls, model: str = "article", **kw):
        """The config of `model` with its defaults (MODEL_DEFAULTS), `kw` winning.

        Example:
            >>> CellsConfig.for_model("equilibrium").loss
            'ce'
        """
        return cls.from_dict({**MODEL_DEFAULTS[model], "model": model, **kw})
