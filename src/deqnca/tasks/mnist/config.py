"""The MNIST task's options and presets, torch-free (the command line reads them without importing torch).

Presets (`PRESETS`, docs/mnist.md has their numbers):
essay          eqs. (1)-(2) with the essay's recipe (SGD 0.005/0.9, batch 64, noise init, 10 epochs);
               the state is the 16-step rollout, trained by BPTT.
essay-broyden  the same with TorchDeq's Broyden kept as the solver (NaN-safe) and phantom gradients.
equilibrium    same family, but the rule is a γ-contraction solved by Picard iteration to a relative
               residual of 1e-4 and trained by implicit differentiation; batch-normalised read-out.
equilibrium-fast / -fixed / -v0   variants measured in docs/mnist.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from deqnca.core.configs import merged, option
from deqnca.engine.options import TrainConfig

_ESSAY_TRAIN = {"epochs": 10, "batch_size": 64, "optimizer": "sgd", "lr": 0.005, "momentum": 0.9}
_EQ_TRAIN = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}
_EQ_MODEL = {"rule": "contractive_tanh", "rule_kw": {"gamma": 0.9, "renormalize": True}, "conditioning": "injection",
             "solver": "fixed_point", "solver_kw": {"max_iter": 100, "tol": 1e-4}, "gradient": "implicit",
             "gradient_kw": {"b_solver": "fixed_point", "b_max_iter": 100, "b_tol": 1e-4}, "readout_norm": "batch"}
PRESETS = {
    # the essay's model and optimiser; the state is the 16-step rollout that TorchDeq's Broyden
    # degenerates to on eq. (2) (docs/mnist.md), trained by BPTT
    "essay": {"model": {"rule": "residual_tanh", "rule_kw": {"state_init_scale": 0.1}, "conditioning": "injection",
                        "solver": "rollout", "solver_kw": {"max_iter": 16}, "gradient": "bptt", "gradient_kw": {}},
              "train": _ESSAY_TRAIN},
    "essay-broyden": {"model": {"rule": "residual_tanh", "rule_kw": {"state_init_scale": 0.1},
                                "conditioning": "injection", "solver": "broyden",
                                "solver_kw": {"max_iter": 16, "tol": 1e-3, "stop_mode": "abs"},
                                "gradient": "phantom", "gradient_kw": {"k": 8}},
                      "train": _ESSAY_TRAIN},
    # Picard, not Anderson: as many steps on this contraction in 2.5x less time (docs/mnist.md)
    "equilibrium": {"model": _EQ_MODEL, "train": _EQ_TRAIN},
    "equilibrium-v0": {"model": {"rule": "contractive_tanh", "rule_kw": {"gamma": 0.9}, "conditioning": "injection",
                                 "solver": "anderson", "solver_kw": {"max_iter": 40, "tol": 1e-4},
                                 "gradient": "implicit",
                                 "gradient_kw": {"b_solver": "anderson", "b_max_iter": 40, "b_tol": 1e-4}},
                       "train": _EQ_TRAIN},
}
# the adjoint solve capped at 12 steps: learns as fast, backward ~4x cheaper
PRESETS["equilibrium-fast"] = copy.deepcopy(PRESETS["equilibrium"])
PRESETS["equilibrium-fast"]["model"]["gradient_kw"]["b_max_iter"] = 12
# fixed-length solves: no data-dependent loop, so the step can be captured as a CUDA graph
PRESETS["equilibrium-fixed"] = copy.deepcopy(PRESETS["equilibrium-fast"])
PRESETS["equilibrium-fixed"]["model"].update(solver="rollout", solver_kw={"max_iter": 40})
PRESETS["equilibrium-fixed"]["model"]["gradient_kw"].update(b_solver="rollout")


@dataclass
class MnistConfig(TrainConfig):
    """Training options of the MNIST task (the engine's, plus these)."""
    model: dict = option({}, "model config (ModelConfig fields; a preset fills it)", flag=False)
    train_subset: int = option(0, "train on the first N training images; 0 = all", min=0)
    test_subset: int = option(0, "evaluate on the first N test images each epoch; 0 = all", min=0)
    eval_batch_size: int = option(500, "images per solve in the per-epoch evaluation", min=1)
    channels_last: str = option("auto", "memory layout (auto: channels-last on a CPU)", choices=("auto", "on", "off"))
    cuda_graph: str = option("auto", "capture the training step as one CUDA graph (auto: on a GPU when the model "
                             "allows)", choices=("auto", "on", "off"))


def preset(name: str, model_overrides: dict | None = None, train_overrides: dict | None = None) -> dict:
    """{"model": ..., "train": ...} of preset `name` with overrides merged in (checked against the configs).

    Examples:
        >>> preset("essay", {"solver_kw": {"max_iter": 8}})["model"]["solver_kw"]
        {'max_iter': 8}
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    p = copy.deepcopy(PRESETS[name])
    model_overrides = dict(model_overrides or {})
    # switching to another solver, gradient or rule drops the preset's options for the old one
    for choice, options in (("solver", "solver_kw"), ("gradient", "gradient_kw"), ("rule", "rule_kw")):
        if choice in model_overrides and model_overrides[choice] != p["model"][choice]:
            p["model"][options] = {}
    from deqnca.tasks.mnist.model import ModelConfig

    p["model"] = merged(ModelConfig, p["model"], model_overrides, "model config")
    p["train"] = merged(MnistConfig, p["train"], dict(train_overrides or {}), "train config")
    return p
