"""The self-classifying task's options (`CellsConfig`) and presets (`PRESETS`), torch-free: the command line
builds its flags from them without importing torch.

A preset is a function of no arguments returning a whole run's `CellsConfig`, one per model: ``deqnca cells
train --model NAME`` starts from preset NAME (explicit options win), and `preset(name, **options)` returns one
with options changed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from deqnca.core.configs import option
from deqnca.core.registry import Registry
from deqnca.engine.options import TrainConfig


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
    init_from: str = option("", "start from this cells checkpoint's weights (a path or a shipped name such as "
                            "cells/consensus; same rule, its settings may differ; fresh optimizer)")


PRESETS = Registry("cells preset", "a function of no arguments returning a CellsConfig")


@PRESETS.register("article")
def article() -> CellsConfig:
    """The article's model trained by BPTT with its notebook's recipe (`CellsConfig`'s defaults).

    Example:
        >>> article().loss
        'l2'
    """
    return CellsConfig()


@PRESETS.register("equilibrium")
def equilibrium() -> CellsConfig:
    """The contraction solved to its fixed point, trained implicitly: the per-cell cross-entropy, batch 32, Adam
    1e-2 with a cosine schedule, gradient clipping at 1, no per-parameter normalisation, 20,000 steps.

    Example:
        >>> equilibrium().loss
        'ce'
    """
    return CellsConfig.from_dict({"model": "equilibrium", "loss": "ce", "batch_size": 32, "lr": 1e-2,
                                  "normalise_gradients": False, "grad_clip": 1.0, "schedule": "cosine",
                                  "steps": 20000})


@PRESETS.register("consensus")
def consensus() -> CellsConfig:
    """The equilibrium's recipe for the consensus model, with room for the flood (a digit's width in steps)
    in both solves.

    Example:
        >>> consensus().solver_iter, consensus().b_max_iter
        (120, 80)
    """
    return preset("equilibrium", model="consensus", solver_iter=120, b_max_iter=80)


def preset(name: str, **options) -> CellsConfig:
    """The config of preset `name` with `options` (`CellsConfig` fields) changed, checked by the strict loader.

    Example:
        >>> preset("equilibrium", size=14).loss
        'ce'
    """
    return CellsConfig.from_dict({**asdict(PRESETS.build(name)), **options})
