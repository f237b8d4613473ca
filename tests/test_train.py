"""Tiny trainings learn; runs resume exactly; Ctrl-C and non-finite steps leave usable checkpoints."""
import json
import types

import pytest
import torch
import torch.nn.functional as F

from deqnca import load
from deqnca.core import readout
from deqnca.core.amp import amp_context
from deqnca.engine.checkpoint import read_checkpoint
from deqnca.engine.task import Batch, Task
from deqnca.engine.trainer import TrainConfig as EngineConfig
from deqnca.engine.trainer import epoch_order, fit
from deqnca.tasks.mnist.task import MnistConfig as TrainConfig
from deqnca.tasks.mnist.task import train

TINY = dict(rule="residual_tanh", rule_kw={"state_init_scale": 0.1}, solver="rollout",
            solver_kw={"max_iter": 4}, gradient="bptt", gradient_kw={}, input_channels=8, state_channels=16,
            hidden=32)


def test_tiny_training_learns_past_threshold(tmp_path):
    # The equilibrium preset at a quarter of the width (4,458 parameters) on 3,200 training images
    # downsampled to 14x14, 2 epochs: ~60% then ~69% on 500 test images (an untrained model: ~10%).
    # The batch-normalised read-out is what makes this possible in CI time (docs/mnist.md).
    from deqnca.data.idx import load_mnist
    from deqnca.tasks.mnist.config import preset

    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    data = (F.avg_pool2d(x[:3200], 2), y[:3200], F.avg_pool2d(xt[:500], 2), yt[:500])
    cfg = preset("equilibrium", {"state_channels": 16, "input_channels": 8}, lr=8e-3, epochs=2, eval_batch_size=500)
    result = train(cfg.model, cfg, tmp_path, data, log=lambda s: None)
    assert result["history"][-1]["test_acc"] >= 0.65, [h["test_acc"] for h in result["history"]]
    assert result["history"][-1]["test_frac_below_1e-3"] == 1.0        # and it is at equilibrium
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "test_acc", "test_rel_median", "elapsed_s", "global_step"} <= set(rows[0])
    model, meta = load(tmp_path / "last")
    assert meta["progress"]["epoch"] == 2


def _subset(data, n=320, nt=64):
    x, y, xt, yt = data
    return x[:n], y[:n], xt[:nt], yt[:nt]


def test_interrupt_then_resume_equals_uninterrupted_run(mnist_small, tmp_path, monkeypatch):
    data = _subset(mnist_small)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, seed=1)
    ref = train(TINY, cfg, tmp_path / "ref", data, log=lambda s: None)["model"]

    calls = {"n": 0}

    def exploding_ce(*a, **k):
        calls["n"] += 1
        if calls["n"] == 15:          # epoch 2, batch 5
            raise KeyboardInterrupt
        return F.cross_entropy(*a, **k)

    monkeypatch.setattr(readout, "F", types.SimpleNamespace(cross_entropy=exploding_ce, relu=F.relu,
                                                            conv2d=F.conv2d, avg_pool2d=F.avg_pool2d))
    with pytest.raises(KeyboardInterrupt):
        train(TINY, cfg, tmp_path / "run", data, log=lambda s: None)
    _, meta = read_checkpoint(tmp_path / "run" / "last")
    assert (meta["progress"]["epoch"], meta["progress"]["step_in_epoch"]) == (1, 4)
    monkeypatch.setattr(readout, "F", F)
    resumed = train(TINY, cfg, tmp_path / "run", data, resume=True, log=lambda s: None)["model"]
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_non_finite_steps_are_skipped_and_never_saved(mnist_small, tmp_path):
    x, y, xt, yt = _subset(mnist_small)
    x = x.clone()
    x[:32] = float("nan")                       # the first batch of every epoch (and more) is poisoned
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05, seed=0)
    with pytest.warns(UserWarning, match="non-finite"):
        result = train(TINY, cfg, tmp_path, (x, y, xt, yt), log=lambda s: None)
    assert result["history"][-1]["skipped_steps"] >= 1
    model, _ = load(tmp_path / "last")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_persistent_divergence_stops_with_clear_error(mnist_small, tmp_path):
    x, y, xt, yt = _subset(mnist_small)
    cfg = TrainConfig(epochs=1, batch_size=32, max_bad_steps=3)
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError, match="consecutive bad steps"):
        train(TINY, cfg, tmp_path, (torch.full_like(x, float("nan")), y, xt, yt), log=lambda s: None)


def test_readout_norm_statistics_are_recalibrated_for_the_current_weights(mnist_small):
    # the running average lags the weights; recalibration replaces it by the plain average of the
    # batch statistics over the given images, weights untouched
    from deqnca.tasks.mnist.model import EquilibriumModel

    x = mnist_small[0][:200]
    model = EquilibriumModel({**TINY, "readout_norm": "batch"})
    norm = model.readout.norm
    norm.running_mean.fill_(5.0)
    norm.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    model.calibrate_readout_norm(x, batch_size=100, images=200, seed=0)
    gen = torch.Generator().manual_seed(0)
    means, vars_ = [], []
    with torch.no_grad():
        for i in (0, 100):
            z, _ = model.solve(x[i:i + 100], generator=gen)
            pooled = z.mean(dim=(2, 3))
            means.append(pooled.mean(0))
            vars_.append(pooled.var(0))
    torch.testing.assert_close(norm.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.running_var, torch.stack(vars_).mean(0), rtol=1e-3, atol=1e-8)
    assert norm.momentum == 0.1 and model.training          # restored as it was
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_bf16_amp_runs_the_convolutions_in_bfloat16_and_keeps_the_state_float32(mnist_small, monkeypatch):
    from deqnca.tasks.mnist.model import EquilibriumModel

    model = EquilibriumModel(TINY)
    x = mnist_small[0][:8]
    z32, _ = model.solve(x, generator=torch.Generator().manual_seed(0))
    conv2d, conv_dtypes = F.conv2d, []

    def recording_conv2d(*a, **k):
        out = conv2d(*a, **k)
        conv_dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(F, "conv2d", recording_conv2d)
    with amp_context("bf16", "cpu"):
        z16, _ = model.solve(x, generator=torch.Generator().manual_seed(0))
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}, conv_dtypes
    assert z16.dtype == torch.float32
    rel = float((z16 - z32).detach().norm() / z32.detach().norm())
    assert 1e-5 < rel < 3e-2, rel        # bfloat16 rounding (8-bit mantissa), and nothing worse


@pytest.mark.parametrize("name", ["essay", "equilibrium"])
def test_bf16_amp_trains_every_mnist_rule_with_a_float32_state(mnist_small, name):
    """The contractive rule's map is tanh(...) alone: under autocast it must still hand the solver a float32
    state, or the implicit gradient's backward pass (outside autocast) meets a bfloat16 state."""
    from deqnca.tasks.mnist.config import preset
    from deqnca.tasks.mnist.model import EquilibriumModel

    torch.manual_seed(0)
    model = EquilibriumModel(preset(name).model).train()
    x, y = mnist_small[0][:4], mnist_small[1][:4]
    grads = {}
    for amp in ("off", "bf16"):
        with amp_context(amp, "cpu"):
            z, _ = model.solve(x, generator=torch.Generator().manual_seed(0))
            loss, _ = model.readout.loss(z, x, y)
        assert z.dtype == torch.float32
        loss.backward()
        grads[amp] = model.rule.K2.weight.grad.clone()
        model.zero_grad(set_to_none=True)
    rel = float((grads["bf16"] - grads["off"]).norm() / grads["off"].norm())
    assert 0 < rel < 0.1, rel            # bfloat16 rounding in the gradient, nothing worse


def test_bf16_amp_training_learns_like_float32(mnist_small, tmp_path):
    # 3,000 images at 14x14, 4 epochs: 80.4% in float32 and 79.2% under bf16 (CPU, 2026-12-01)
    x, y, xt, yt = mnist_small
    data = (F.avg_pool2d(x, 2), y, F.avg_pool2d(xt, 2), yt)
    acc = {}
    for amp in ("off", "bf16"):
        cfg = TrainConfig(epochs=4, batch_size=32, optimizer="adam", lr=3e-3, seed=0, amp=amp)
        history = train({**TINY, "readout_norm": "batch"}, cfg, tmp_path / amp, data, log=lambda s: None)["history"]
        acc[amp] = history[-1]["test_acc"]
    assert acc["bf16"] >= 0.7 and abs(acc["bf16"] - acc["off"]) <= 0.08, acc
    _, meta = read_checkpoint(tmp_path / "bf16" / "last")
    assert meta["train_config"]["amp"] == "bf16"        # a resumed run keeps its precision


def test_unknown_amp_mode_and_graphed_bf16_are_refused(mnist_small, tmp_path):
    from deqnca.engine.graphs import step_unsupported_reason
    from deqnca.tasks.mnist.model import EquilibriumModel

    with pytest.raises(ValueError, match="amp='fp8'"):
        train(TINY, TrainConfig(amp="fp8"), tmp_path, _subset(mnist_small), log=lambda s: None)
    model = EquilibriumModel(TINY)
    assert step_unsupported_reason(model, TrainConfig()) is None
    assert "bfloat16" in step_unsupported_reason(model, TrainConfig(amp="bf16"))


class _LinearModel(torch.nn.Linear):
    config = types.SimpleNamespace(to_dict=lambda: {"kind": "linear"})


class _MeterTask(Task):
    """Five steps an epoch of a linear fit; the running loss in the engine's meter (a number and a tensor)."""
    name = "meter-test"
    interrupt_at = None

    def setup(self):
        self.x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        self.y = self.x.sum(1, keepdim=True)

    def build_model(self):
        return _LinearModel(3, 1)

    def steps_per_epoch(self):
        return 5

    def start_epoch(self, epoch):
        self.order = epoch_order(40, self.cfg.seed, epoch)

    def batch(self, epoch, index, global_step):
        self.step = global_step
        rows = self.order[index * 8:(index + 1) * 8]
        return Batch((self.x[rows], self.y[rows]), 8, 8, index)

    def loss(self, batch):
        if self.step == self.interrupt_at:
            raise KeyboardInterrupt
        x, y = batch.data
        loss = F.mse_loss(self.model(x), y)
        return loss, loss.detach()

    def after_step(self, batch, out, ok, step):
        self.meter.add("loss", out.item() * batch.local, batch.local)
        self.meter.add("loss_tensor", out)

    def end_epoch(self, epoch, global_step, elapsed):
        return {"epoch": epoch, "loss": self.meter.mean("loss"), "loss_tensor": self.meter.mean("loss_tensor")}


def test_the_meter_is_checkpointed_and_resumes_mid_epoch_exactly(tmp_path):
    cfg = dict(epochs=2, batch_size=8, lr=0.05, seed=3)
    whole = fit(_MeterTask(EngineConfig(**cfg)), tmp_path / "whole", progress=False, log=lambda s: None)
    task = _MeterTask(EngineConfig(**cfg))
    task.interrupt_at = 7                                  # epoch 2, after two of its steps
    with pytest.raises(KeyboardInterrupt):
        fit(task, tmp_path / "run", progress=False, log=lambda s: None)
    _, meta = read_checkpoint(tmp_path / "run" / "last")
    assert meta["progress"]["step_in_epoch"] == 2
    assert meta["meter"]["counts"]["loss"] == 16 and len(meta["meter"]["series"]["loss_tensor"]) == 2
    resumed = fit(_MeterTask(EngineConfig(**cfg)), tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    assert resumed["history"] == whole["history"]           # the same sums, in the same order: equal floats
    assert whole["history"][0]["loss"] != whole["history"][1]["loss"]      # each epoch its own means
