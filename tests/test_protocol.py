"""One model protocol, one loader: every shipped model loads through `deqnca.load` into its kind's class,
and `deqnca.rollout` (the NCA view) on each kind ends at the residual its documentation states."""
import json
import shutil

import pytest
import torch

import deqnca
from deqnca.core.resources import models_dir, shipped_names
from deqnca.engine.checkpoint import CheckpointError

CLASSES = {"mnist": "EquilibriumModel", "cells": "CellsModel", "grow": "GrowModel", "maze": "MazeSolverNet",
           "cnn": "SmallCNN"}


def _kind_of(name: str) -> str:
    if name.startswith("baselines/"):                 # the CNN of the crop comparison
        return "cnn"
    return name.split("/")[0] if "/" in name else name.split("-")[0]


@pytest.fixture(scope="module")
def test_digits():
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="test")
    return x, y


@pytest.mark.slow                      # ~5 s: the contractive cells rules estimate their norm when built
def test_every_shipped_model_loads_into_its_kinds_class():
    names = shipped_names()
    assert len(names) >= 14
    for name in names:
        model, meta = deqnca.load(name)
        kind = _kind_of(name)
        assert meta["kind"] == kind, name
        assert type(model).__name__ == CLASSES[kind] and isinstance(model, deqnca.CellularModel), name
        assert type(model) is deqnca.MODELS.get(kind) and not model.training, name


def test_unknown_and_wrong_kinds_are_one_line_errors(tmp_path, capsys):
    from deqnca.cli import main

    src = models_dir() / "mnist-essay"
    for suffix in (".json", ".safetensors"):
        shutil.copy(src.parent / (src.name + suffix), tmp_path / ("ck" + suffix))
    record = json.loads((tmp_path / "ck.json").read_text())
    (tmp_path / "ck.json").write_text(json.dumps({**record, "kind": "alien"}))
    with pytest.raises(CheckpointError) as e:
        deqnca.load(tmp_path / "ck")
    assert "unknown model kind 'alien'" in str(e.value) and "--plugin" in str(e.value)
    assert "\n" not in str(e.value)
    assert main(["eval", str(tmp_path / "ck"), "--limit", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'alien'" in err
    with pytest.raises(CheckpointError, match="a 'mnist' checkpoint, not a 'maze' one"):
        deqnca.load("mnist-essay", kind="maze")
    # a record from before checkpoints named their kind is an MNIST classifier
    del record["kind"]
    (tmp_path / "ck.json").write_text(json.dumps(record))
    assert type(deqnca.load(tmp_path / "ck")[0]).__name__ == "EquilibriumModel"


def test_configs_refuse_unknown_keys_everywhere():
    from deqnca.tasks.cells.model import CellsModelConfig
    from deqnca.tasks.grow.rule import GrowingConfig
    from deqnca.tasks.maze.model_config import MazeNetConfig

    for cls in (deqnca.ModelConfig, CellsModelConfig, GrowingConfig, MazeNetConfig):
        with pytest.raises(deqnca.ConfigError, match="unknown .* keys \\['colour'\\]"):
            cls.from_dict({"colour": "red"})


def test_the_solvers_live_under_deqnca_solvers():
    from deqnca.core import nca, solvers

    assert deqnca.solvers is solvers and deqnca.solvers.fixed_point is solvers.fixed_point
    assert deqnca.rollout is nca.rollout and "rollout" in deqnca.solvers.SOLVERS
    for name in ("fixed_point", "anderson", "broyden", "get_solver", "SOLVERS", "register_solver"):
        assert not hasattr(deqnca, name), name


def test_the_mnist_initial_state_is_the_one_solve_starts_from():
    model = deqnca.EquilibriumModel({"in_channels": 3, "solver": "rollout", "gradient": "bptt",
                                     "solver_kw": {"max_iter": 2}})
    for x in (torch.rand(2, 3, 9, 9), torch.rand(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)):
        z0 = model.initial_state(x, torch.Generator().manual_seed(0))
        f = model.step_map(x)
        z, _ = model.solve(x, generator=torch.Generator().manual_seed(0), max_iter=2)
        assert torch.equal(z, f(f(z0)))
        assert z0.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
            memory_format=torch.channels_last) and not (x.is_contiguous() and not z0.is_contiguous())


# --- the NCA view of every kind ends where its documentation says --------------------------------------

def test_rollout_mnist_equilibrium_reaches_its_fixed_point(test_digits):
    """docs/mnist.md: median relative residual 8.49e-5 at the classified state (its solver, tol 1e-4);
    iterated long enough, every image's residual falls below 1e-3."""
    x, y = test_digits
    model, _ = deqnca.load("mnist-equilibrium")
    xb = x[torch.linspace(0, len(x) - 1, 8).long()]
    r = deqnca.rollout(model, xb, 80, generator=torch.Generator().manual_seed(0), keep_states=False)
    assert r.rel_residual.shape == (8, 80) and r.readouts.shape == (8, 81, 10) and r.states is None
    assert r.rel_residual[:, -1].max() < 1e-3
    _, stats = model.solve(xb, generator=torch.Generator().manual_seed(0))
    assert 2e-5 < stats.rel_residual.median() <= 1e-4


def test_rollout_mnist_essay_after_its_16_steps(test_digits):
    """docs/mnist.md: median relative residual 7.48e-2 after the essay model's 16 steps."""
    x, y = test_digits
    model, _ = deqnca.load("mnist-essay")
    idx = torch.linspace(0, len(x) - 1, 48).long()
    r = deqnca.rollout(model, x[idx], 17, generator=torch.Generator().manual_seed(0), frames=[0, 16])
    assert r.frame_steps == [0, 16] and r.states.shape[:2] == (48, 2)
    assert r.rel_residual[:, 16].median().item() == pytest.approx(7.48e-2, rel=0.2)   # the residual at z_16
    assert (r.probs[:, 16].argmax(-1) == y[idx]).float().mean() > 0.9


def test_rollout_cells_consensus_at_step_200(test_digits):
    """docs/cells.md: relative residual 5.3e-8 at step 200 (mean over the test set)."""
    x, _ = test_digits
    model, meta = deqnca.load("cells/consensus")
    assert meta["train_config"]["size"] == 28
    xb = x[torch.linspace(0, len(x) - 1, 4).long()]
    r = deqnca.rollout(model, xb, 201, keep_states=False)
    assert r.rel_residual[:, 200].mean() < 1e-6
    # a per-cell read-out is kept at the kept states' steps only: here, with none kept, the last
    assert r.readouts.shape == (4, 1, 10, 28, 28) and r.readout_steps == [201]


def test_rollout_maze_geodesic_reaches_its_exact_fixed_point():
    """docs/mazes.md: the geodesic model iterates from zeros to its exact fixed point (residual 0)."""
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze.model import inference_iters, predict

    model, _ = deqnca.load("maze/geodesic")
    x, y = mazes.to_images(mazes.generate_set(9, 4, "test"))
    steps = inference_iters(model, *x.shape[2:])           # the rule's guaranteed bound
    r = deqnca.rollout(model, x, steps, frames=[steps])
    assert (r.rel_residual[:, -1] == 0).all() and (r.states[:, 0] >= 0).all()
    assert r.readouts.shape == (4, 1, 2, *x.shape[2:])
    assert (predict(r.readouts[:, -1], x) == y.bool()).flatten(1).all(1).all()       # every maze solved


def test_rollout_grow_lizard_equilibrium_grows_the_lizard():
    """docs/grow.md: L2 0.0022 to the target after 96 steps of growth from one seed cell (8 replays), the
    expected map's relative residual there 0.017."""
    from deqnca.tasks.grow.rule import target_loss

    model, _ = deqnca.load("grow/lizard-equilibrium")
    x = model.canvas(2)
    r = deqnca.rollout(model, x, 96, generator=torch.Generator().manual_seed(0), frames=[0, 96])
    assert r.states[:, 0, 3].flatten(1).gt(0).sum(1).tolist() == [1, 1]           # one seed cell each
    assert target_loss(r.readouts[:, -1], model.target[None]).mean() < 0.005
    assert r.rel_residual[:, -1].max() < 0.05


def test_the_cnn_baseline_is_the_degenerate_kind_and_scores_its_documented_accuracy(test_digits):
    # a feed-forward network: its state is its input, its step the identity (nothing to iterate)
    model, meta = deqnca.load("baselines/cnn-small")
    x, y = test_digits
    roll = deqnca.rollout(model, x[:8], steps=3)
    assert roll.rel_residual.abs().max() == 0
    with torch.no_grad():
        accuracy = sum((model(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum().item() for i in range(0, 10000, 2000))
    assert accuracy / 10000 == meta["metrics"]["test_acc"] == 0.9862
