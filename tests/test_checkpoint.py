"""Checkpoints round-trip without pickle, refuse non-finite weights and detect corruption."""
import json

import pytest
import torch

from deqnca import load
from deqnca.engine.checkpoint import CheckpointError, load_optimizer_state, read_checkpoint, save_checkpoint
from deqnca.tasks.mnist.model import EquilibriumModel

CFG = dict(rule="contractive_tanh", solver="fixed_point", gradient="phantom", gradient_kw={"k": 1},
           solver_kw={"max_iter": 5, "tol": 1e-3}, input_channels=4, state_channels=6, hidden=8)


def _trained(tmp_path):
    torch.manual_seed(0)
    model = EquilibriumModel(CFG)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", model, opt, {"epoch": 3})
    return model, opt


def test_round_trip_model_optimizer_and_buffers(tmp_path, monkeypatch):
    model, opt = _trained(tmp_path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("checkpoint loading must not unpickle"))
    loaded, meta = load(tmp_path / "ck")
    assert meta["epoch"] == 3
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k            # includes the power-iteration buffer
    opt2 = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    tensors, meta = read_checkpoint(tmp_path / "ck")
    load_optimizer_state(opt2, tensors, meta)
    m1 = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], m1)


def test_refuses_non_finite_weights_and_keeps_previous(tmp_path):
    model, opt = _trained(tmp_path)
    before = (tmp_path / "ck.safetensors").read_bytes()
    with torch.no_grad():
        model.K1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "ck", model, opt)
    assert (tmp_path / "ck.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_detects_corrupt_and_missing_files(tmp_path):
    _trained(tmp_path)
    st = tmp_path / "ck.safetensors"
    data = bytearray(st.read_bytes())
    data[-5] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load(tmp_path / "ck")
    st.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "ck", verify=False)
    (tmp_path / "ck.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="missing"):
        load(tmp_path / "nothing")


def test_weights_that_do_not_fit_the_config(tmp_path):
    _trained(tmp_path)
    meta = json.loads((tmp_path / "ck.json").read_text())
    meta["model_config"]["state_channels"] = 7
    meta.pop("weights_sha256")
    (tmp_path / "ck.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load(tmp_path / "ck")
