"""The engine's options (`TrainConfig`), torch-free: the command line derives its flags from them without
importing torch, and every task's config subclasses `TrainConfig`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..configs import ConfigError, load_dataclass, option

AMP_MODES = ("off", "bf16", "auto")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainConfig:
    """The engine's options, shared by every task (a task's config subclasses it and adds its own).

    Examples:
        >>> TrainConfig(epochs=2, lr=0.01).schedule
        'constant'
    """
    epochs: int = option(10, "passes over the training set (or over `steps` steps)")
    batch_size: int = option(64, "samples per optimiser step (split across torchrun processes)")
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = option(0.005, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay (AdamW: decoupled)")
    schedule: str = option("constant", "learning-rate schedule: constant, cosine (over the run), or step "
                           "(times lr_decay from step lr_decay_at)", choices=SCHEDULES)
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    lr_decay_at: int = option(0, "schedule 'step': the step where the rate drops")
    lr_decay: float = option(0.1, "schedule 'step': the factor it drops by")
    grad_clip: float = option(0.0, "max gradient norm; 0 = off")
    seed: int = option(0, "random seed (initialisation, batch order, every random draw of a step)")
    time_budget: float = option(0.0, "seconds of training before a clean stop; 0 = none")
    max_bad_steps: int = option(50, "consecutive non-finite steps before giving up")
    amp: str = option("off", "bf16: forward pass under bfloat16 autocast (state and loss stay float32); auto: "
                      "bf16 only where this CPU runs it faster (deqnca.hardware)", choices=AMP_MODES)
    checkpoint_every: int = option(0, "steps between mid-epoch checkpoints; 0 = end of epoch only")
    log_every: int = option(0, "steps between progress records in metrics.jsonl; 0 = per epoch only")

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a dict; unknown keys and wrong types are one-line errors."""
        return load_dataclass(cls, d, "train config")

    def validate(self) -> None:
        """One-line errors for values no run can use."""
        for name in ("epochs", "batch_size", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)}: must be at least 1")
        for name in ("lr", "time_budget", "grad_clip", "weight_decay", "warmup_steps", "checkpoint_every",
                     "log_every", "lr_decay_at"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} = {v}: must be a finite number >= 0")
