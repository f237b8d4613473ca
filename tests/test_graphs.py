"""The CUDA-graph training step: refuses what it cannot capture; on a GPU it trains like the eager step."""
import pytest
import torch

from deqnca.engine.checkpoint import read_checkpoint, save_checkpoint
from deqnca.engine.graphs import graph_unsupported_reason, step_unsupported_reason
from deqnca.engine.trainer import make_optimizer
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.model import EquilibriumModel
from deqnca.tasks.mnist.task import MnistConfig as TrainConfig
from deqnca.tasks.mnist.task import train

TINY = dict(rule="residual_tanh", rule_kw={"state_init_scale": 0.1}, solver="rollout",
            solver_kw={"max_iter": 4}, gradient="bptt", gradient_kw={}, input_channels=8, state_channels=16,
            hidden=32)
# the equilibrium-fixed preset at toy size: contractive rule, 6 Picard steps forward, implicit gradient
# with a 4-step Picard adjoint, batch-normalised read-out, Adam with a cosine schedule
TINY_EQ = {**preset("equilibrium-fixed").model, "solver_kw": {"max_iter": 6}, "input_channels": 8,
           "state_channels": 16, "hidden": 32}
TINY_EQ["gradient_kw"] = {**TINY_EQ["gradient_kw"], "b_max_iter": 4}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_capture_is_refused_with_a_reason():
    model = EquilibriumModel(TINY)
    assert "CUDA" in graph_unsupported_reason(model, TrainConfig(), "cpu", 1)
    if torch.cuda.is_available():
        assert graph_unsupported_reason(model, TrainConfig(), "cuda", 1) is None
        assert "DDP" in graph_unsupported_reason(model, TrainConfig(), "cuda", 2)
        assert "constant" in graph_unsupported_reason(model, TrainConfig(schedule="cosine"), "cuda", 1)
        implicit = EquilibriumModel({**TINY, "solver": "fixed_point", "gradient": "implicit"})
        assert "rollout" in graph_unsupported_reason(implicit, TrainConfig(), "cuda", 1)


def test_which_steps_have_a_fixed_shape():
    adam_cosine = TrainConfig(optimizer="adam", schedule="cosine")
    assert step_unsupported_reason(EquilibriumModel(TINY_EQ), adam_cosine) is None
    assert step_unsupported_reason(EquilibriumModel(preset("equilibrium-fixed").model), adam_cosine) is None
    assert "stopping test" in step_unsupported_reason(EquilibriumModel(preset("equilibrium").model), adam_cosine)
    adaptive_adjoint = {**TINY_EQ, "gradient_kw": {"b_solver": "fixed_point", "b_max_iter": 4}}
    assert "adjoint" in step_unsupported_reason(EquilibriumModel(adaptive_adjoint), adam_cosine)
    sgd_cosine = TrainConfig(optimizer="sgd", schedule="cosine")
    assert "constant" in step_unsupported_reason(EquilibriumModel(TINY), sgd_cosine)
    assert "clipping" in step_unsupported_reason(EquilibriumModel(TINY), TrainConfig(grad_clip=1.0))


def test_a_captured_adams_device_settings_are_checkpointed_as_plain_eager_ones(tmp_path):
    model = EquilibriumModel(TINY_EQ)
    opt = make_optimizer(model.parameters(), TrainConfig(optimizer="adam", lr=2e-3))
    for g in opt.param_groups:              # what CapturedStep sets on a GPU
        g["capturable"], g["lr"] = True, torch.tensor(1e-3)
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 0})
    _, meta = read_checkpoint(tmp_path / "ck")
    groups = meta["optimizer"]["param_groups"]
    assert groups and all(g["lr"] == pytest.approx(1e-3) and g["capturable"] is False for g in groups)


def test_forcing_a_graph_on_cpu_is_a_clear_error(mnist_small, tmp_path):
    x, y, xt, yt = mnist_small
    with pytest.raises(ValueError, match="cuda_graph='on' but CUDA graphs need a CUDA device"):
        train(TINY, TrainConfig(epochs=1, cuda_graph="on"), tmp_path, (x[:64], y[:64], xt[:8], yt[:8]),
              log=lambda s: None)


def _eager_and_graphed(model_config, mnist_small, tmp_path, **train_kw) -> dict:
    """The same 2-epoch run (5 full batches and a ragged one) eagerly ("off") and captured ("on")."""
    x, y, xt, yt = mnist_small
    data = (x[:352], y[:352], xt[:64], yt[:64])
    return {mode: train(model_config, TrainConfig(epochs=2, batch_size=64, seed=3, cuda_graph=mode, **train_kw),
                        tmp_path / mode, data, device="cuda", log=lambda s: None) for mode in ("off", "on")}


@cuda
def test_graphed_training_matches_eager_training(mnist_small, tmp_path):
    # 5 full batches and a ragged one (eager in both runs), SGD with momentum: same weights
    runs = _eager_and_graphed(TINY, mnist_small, tmp_path, optimizer="sgd", lr=0.05)
    eager, graphed = (runs[m]["model"].state_dict() for m in ("off", "on"))
    for k in eager:
        torch.testing.assert_close(graphed[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)
    assert runs["on"]["history"][-1]["test_acc"] == pytest.approx(runs["off"]["history"][-1]["test_acc"], abs=0.02)


@cuda
def test_graphed_step_restores_after_a_non_finite_batch(mnist_small, tmp_path):
    x, y, xt, yt = mnist_small
    x = x[:256].clone()
    x[5] = float("nan")                           # one image poisons the one replayed step it lands in
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, seed=0, cuda_graph="on")
    with pytest.warns(UserWarning, match="restored"):
        r = train(TINY, cfg, tmp_path, (x, y[:256], xt[:64], yt[:64]), device="cuda", log=lambda s: None)
    assert r["history"][-1]["restored"] == 1 and r["history"][-1]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in r["model"].parameters())


@cuda
def test_graphed_equilibrium_training_matches_eager_training(mnist_small, tmp_path):
    # fixed-length forward and implicit adjoint, read-out BatchNorm, W_z renormalised after each step,
    # Adam with a cosine schedule (a device-tensor learning rate): the same weights as the eager steps
    runs = _eager_and_graphed(TINY_EQ, mnist_small, tmp_path, optimizer="adam", lr=2e-3, schedule="cosine")
    eager, graphed = (runs[m]["model"].state_dict() for m in ("off", "on"))
    for k in eager:
        if eager[k].is_floating_point():
            torch.testing.assert_close(graphed[k], eager[k], rtol=1e-3, atol=1e-4, msg=k)
    assert runs["on"]["history"][-1]["test_acc"] == pytest.approx(runs["off"]["history"][-1]["test_acc"], abs=0.03)
    # the captured run's checkpoint resumes eagerly (plain Adam settings were stored)
    cfg = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=2e-3, schedule="cosine", seed=3,
                      cuda_graph="off")
    x, y, xt, yt = mnist_small
    r = train(TINY_EQ, cfg, tmp_path / "on", (x[:352], y[:352], xt[:64], yt[:64]), device="cuda", resume=True,
              log=lambda s: None)
    assert len(r["history"]) == 3
