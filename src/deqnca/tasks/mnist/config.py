"""The MNIST task's options (`MnistConfig`) and presets (`PRESETS`), torch-free (the command line reads them
without importing torch).

A preset is a function of no arguments that returns a whole run's config: an `MnistConfig` whose `model`
holds the model's options (Flax's `get_config()` style). `PRESETS` registers them by name for
``deqnca train --preset NAME``; `preset(name, ...)` returns one with options changed. docs/mnist.md has
their numbers:

essay          eqs. (1)-(2) with the essay's recipe (SGD 0.005/0.9, batch 64, noise init, 10 epochs);
               the state is the 16-step rollout, trained by BPTT.
essay-broyden  the same with TorchDeq's Broyden kept as the solver (NaN-safe) and phantom gradients.
equilibrium    same family, but the rule is a γ-contraction solved by Picard iteration to a relative
               residual of 1e-4 and trained by implicit differentiation; batch-normalised read-out.
equilibrium-fast / -fixed / -v0   variants measured in docs/mnist.md.
equilibrium-strided   the state on every second pixel, 25 epochs with shifted and rotated images.

Your own is one decorator away::

    @PRESETS.register("essay-wide")
    def essay_wide() -> MnistConfig:
        cfg = PRESETS.build("essay")
        cfg.model["state_channels"] = 64
        return cfg
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from deqnca.core.configs import ConfigError, load_dataclass, merged, option
from deqnca.core.registry import Registry
from deqnca.engine.options import TrainConfig


@dataclass
class MnistConfig(TrainConfig):
    """Training options of the MNIST task (the engine's, plus these)."""
    model: dict = option({}, "model config (ModelConfig fields; a preset fills it)", flag=False)
    train_subset: int = option(0, "train on the first N training images; 0 = all", min=0)
    test_subset: int = option(0, "evaluate on the first N test images each epoch; 0 = all", min=0)
    eval_batch_size: int = option(500, "images per solve in the per-epoch evaluation", min=1)
    augment_shift: float = option(0.0, "move each training image by up to this many pixels (random, per image "
                                  "and step; 0: no augmentation)", min=0, max=8)
    augment_rotate: float = option(0.0, "rotate each training image by up to this many degrees", min=0, max=45)
    channels_last: str = option("auto", "memory layout (auto: channels-last on a CPU)", choices=("auto", "on", "off"))
    cuda_graph: str = option("auto", "capture the training step as one CUDA graph (auto: on a GPU when the model "
                             "allows)", choices=("auto", "on", "off"))


PRESETS = Registry("MNIST preset", "a function of no arguments returning an MnistConfig")

_ESSAY_TRAIN = {"epochs": 10, "batch_size": 64, "optimizer": "sgd", "lr": 0.005, "momentum": 0.9}
_EQ_TRAIN = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}


@PRESETS.register("essay")
def essay() -> MnistConfig:
    """The essay's model and optimiser; the state is the 16-step rollout that TorchDeq's Broyden
    degenerates to on eq. (2) (docs/mnist.md), trained by BPTT.

    Example:
        >>> essay().model["solver"]
        'rollout'
    """
    return MnistConfig.from_dict({**_ESSAY_TRAIN, "model": {
        "rule": "residual_tanh", "rule_kw": {"state_init_scale": 0.1}, "conditioning": "injection",
        "solver": "rollout", "solver_kw": {"max_iter": 16}, "gradient": "bptt", "gradient_kw": {}}})


@PRESETS.register("essay-broyden")
def essay_broyden() -> MnistConfig:
    """The essay's model with TorchDeq's Broyden kept as the solver (NaN-safe) and the phantom gradient.

    Example:
        >>> essay_broyden().model["gradient_kw"]
        {'k': 8}
    """
    return MnistConfig.from_dict({**_ESSAY_TRAIN, "model": {
        "rule": "residual_tanh", "rule_kw": {"state_init_scale": 0.1}, "conditioning": "injection",
        "solver": "broyden", "solver_kw": {"max_iter": 16, "tol": 1e-3, "stop_mode": "abs"},
        "gradient": "phantom", "gradient_kw": {"k": 8}}})


@PRESETS.register("equilibrium")
def equilibrium() -> MnistConfig:
    """A γ-contraction solved by Picard iteration to a relative residual of 1e-4, trained by implicit
    differentiation, with a batch-normalised read-out. Picard, not Anderson: as many steps on this
    contraction in 2.5x less time (docs/mnist.md).

    Example:
        >>> equilibrium().model["solver_kw"]
        {'max_iter': 100, 'tol': 0.0001}
    """
    return MnistConfig.from_dict({**_EQ_TRAIN, "model": {
        "rule": "contractive_tanh", "rule_kw": {"gamma": 0.9, "renormalize": True}, "conditioning": "injection",
        "solver": "fixed_point", "solver_kw": {"max_iter": 100, "tol": 1e-4}, "gradient": "implicit",
        "gradient_kw": {"b_solver": "fixed_point", "b_max_iter": 100, "b_tol": 1e-4}, "readout_norm": "batch"}})


@PRESETS.register("equilibrium-v0")
def equilibrium_v0() -> MnistConfig:
    """The first equilibrium recipe: Anderson forward and adjoint, no renormalisation, no read-out norm.

    Example:
        >>> equilibrium_v0().model["solver"]
        'anderson'
    """
    return MnistConfig.from_dict({**_EQ_TRAIN, "model": {
        "rule": "contractive_tanh", "rule_kw": {"gamma": 0.9}, "conditioning": "injection",
        "solver": "anderson", "solver_kw": {"max_iter": 40, "tol": 1e-4}, "gradient": "implicit",
        "gradient_kw": {"b_solver": "anderson", "b_max_iter": 40, "b_tol": 1e-4}}})


@PRESETS.register("equilibrium-fast")
def equilibrium_fast() -> MnistConfig:
    """`equilibrium` with the adjoint solve capped at 12 steps: learns as fast, backward ~4x cheaper.

    Example:
        >>> equilibrium_fast().model["gradient_kw"]["b_max_iter"]
        12
    """
    cfg = equilibrium()
    cfg.model["gradient_kw"]["b_max_iter"] = 12
    return cfg


@PRESETS.register("equilibrium-fixed")
def equilibrium_fixed() -> MnistConfig:
    """`equilibrium-fast` with fixed-length solves (40 steps forward, 12 adjoint): no data-dependent loop,
    so the training step can be captured as a CUDA graph.

    Example:
        >>> equilibrium_fixed().model["solver_kw"]
        {'max_iter': 40}
    """
    cfg = equilibrium_fast()
    cfg.model.update(solver="rollout", solver_kw={"max_iter": 40})
    cfg.model["gradient_kw"]["b_solver"] = "rollout"
    return cfg


@PRESETS.register("equilibrium-strided")
def equilibrium_strided() -> MnistConfig:
    """`equilibrium-fast` with the state on every second pixel (K1 with stride 2: a 14×14 grid for a 28×28
    image, the same 15,466 parameters), trained 25 epochs on images moved by up to 2 pixels and rotated by
    up to 10 degrees. A quarter of the cells per step, and each step reaches twice as far across the digit.

    Example:
        >>> equilibrium_strided().model["input_stride"], equilibrium_strided().epochs
        (2, 25)
    """
    cfg = equilibrium_fast()
    cfg.model["input_stride"] = 2
    cfg.epochs, cfg.augment_shift, cfg.augment_rotate = 25, 2.0, 10.0
    return cfg


def preset(name: str, model_overrides: dict | None = None, **options) -> MnistConfig:
    """The config of preset `name` with model options `model_overrides` merged in (dicts one level deep)
    and training options `options` set, checked by the strict loader. Switching to another solver,
    gradient or rule drops the preset's options for the old one (its ``*_kw``).

    Args:
        name: a registered preset (`PRESETS`).
        model_overrides: `ModelConfig` fields to change.
        **options: `MnistConfig` fields to change.

    Examples:
        >>> cfg = preset("essay", {"solver_kw": {"max_iter": 8}}, epochs=1)
        >>> cfg.model["solver_kw"], cfg.epochs
        ({'max_iter': 8}, 1)
        >>> preset("essay", {"solver": "fixed_point"}).model["solver_kw"]
        {}
    """
    if "model" in options:
        raise ConfigError("preset(): give model options as model_overrides, not as model=")
    from deqnca.tasks.mnist.model import ModelConfig

    cfg = PRESETS.build(name)
    model, overrides, defaults = copy.deepcopy(cfg.model), dict(model_overrides or {}), ModelConfig()
    # switching to another solver, gradient or rule drops the preset's options for the old one
    for choice, kw in (("solver", "solver_kw"), ("gradient", "gradient_kw"), ("rule", "rule_kw")):
        if choice in overrides and overrides[choice] != model.get(choice, getattr(defaults, choice)):
            model[kw] = {}
    model = merged(ModelConfig, model, overrides, "model config")
    return load_dataclass(MnistConfig, {**asdict(cfg), **options, "model": model}, "train config")
