"""The engine's options (`TrainConfig`), torch-free: the command line derives its flags from them without
importing torch, and every task's config subclasses `TrainConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from deqnca.core.configs import ConfigError, check_ranges, field_names, load_dataclass, option

AMP_MODES = ("off", "bf16", "auto")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
MAX_COUNT = 10**9                # epochs, steps, batch sizes, sample counts: far above any run
MAX_ITERATIONS = 100_000         # solver steps: a config asking for more is refused, not run for hours
MAX_SIZE = 4096                  # channels, widths, hidden units, image sides: far above any model here


@dataclass
class SolverOptions:
    """The options every solver takes (a model config's `solver_kw`), with their ranges; a solver's own
    further options (Anderson's `m`, say) pass through unchecked. `check_solver_kw` applies them.

    Example:
        >>> SolverOptions().stop_mode
        'rel'
    """
    max_iter: int = option(16, "solver iterations", min=1, max=MAX_ITERATIONS)
    tol: float = option(1e-3, "tolerance of the residual the solver stops at", min=0)
    stop_mode: str = option("rel", "stop on the relative or the absolute residual", choices=("rel", "abs"))


def check_solver_kw(kw, what: str = "model config") -> None:
    """One-line `ConfigError` for solver options (`solver_kw`) no solver can use: not an object, a nested
    value (`--set solver_kw.max_iter.x=1`), or a `SolverOptions` field of the wrong type or out of range.

    Example:
        >>> check_solver_kw({"max_iter": 0})
        Traceback (most recent call last):
        ...
        deqnca.core.configs.ConfigError: model config solver_kw key 'max_iter': 0 is out of range (1 to 100,000)
    """
    if not isinstance(kw, dict):
        raise ConfigError(f"{what} key 'solver_kw': expected an object of solver options, got {kw!r}")
    for key, value in kw.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{what} key 'solver_kw.{key}': {value!r} is a nested value; a solver option is "
                              "a number or a name")
    known = set(field_names(SolverOptions))
    load_dataclass(SolverOptions, {k: v for k, v in kw.items() if k in known}, f"{what} solver_kw")


@dataclass
class TrainConfig:
    """The engine's options, shared by every task (a task's config subclasses it and adds its own).

    Example:
        >>> TrainConfig(epochs=2, lr=0.01).schedule
        'constant'
    """
    epochs: int = option(10, "passes over the training set (or over `steps` steps)", min=1, max=MAX_COUNT)
    batch_size: int = option(64, "samples per optimiser step (split across torchrun processes)", min=1, max=MAX_COUNT)
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = option(0.005, "learning rate", min=0)
    momentum: float = option(0.9, "SGD momentum", min=0, max=1)
    weight_decay: float = option(0.0, "weight decay (AdamW: decoupled)", min=0)
    schedule: str = option("constant", "learning-rate schedule: constant, cosine (over the run), or step "
                           "(times lr_decay from step lr_decay_at)", choices=SCHEDULES)
    warmup_steps: int = option(0, "linear learning-rate warm-up steps", min=0)
    lr_decay_at: int = option(0, "schedule 'step': the step where the rate drops", min=0)
    lr_decay: float = option(0.1, "schedule 'step': the factor it drops by", min=0)
    grad_clip: float = option(0.0, "max gradient norm; 0 = off", min=0)
    seed: int = option(0, "random seed (initialisation, batch order, every random draw of a step)", min=0,
                       max=2**63 - 1)
    time_budget: float = option(0.0, "seconds of training before a clean stop; 0 = none", min=0)
    max_bad_steps: int = option(50, "consecutive non-finite steps before giving up", min=1)
    amp: str = option("auto", "bf16: forward pass under bfloat16 autocast (state and loss stay float32); auto: "
                      "bf16 only where this CPU has bfloat16 units and runs the run's step faster with it "
                      "(deqnca.engine.cpu_path); float32 elsewhere", choices=AMP_MODES)
    cpu_path: str = option("auto", "auto: a CPU run times its own step on 1 thread or all cores (and the layout, "
                           "and bf16 under --amp auto) and takes the fastest (recorded; a resumed run keeps it); "
                           "fixed: all cores (or OMP_NUM_THREADS), the task's layout", choices=("auto", "fixed"))
    checkpoint_every: int = option(0, "steps between mid-epoch checkpoints; 0 = end of epoch only", min=0)
    log_every: int = option(0, "steps between progress records in metrics.jsonl; 0 = per epoch only", min=0)

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a dict; unknown keys and wrong types are one-line errors."""
        return load_dataclass(cls, d, "train config")

    def checkpoint_interval(self) -> int:
        """Steps between mid-epoch checkpoints (0: at the end of each epoch only); a task's config may
        derive it from its own options."""
        return self.checkpoint_every

    def validate(self) -> None:
        """One-line errors for values no run can use: every option against the range its field declares
        (`option(min=, max=)`, the same check as the loader's and the flags'), a task's as well."""
        check_ranges(self, "train config")
