"""Read-outs: the per-cell (self-classifying) read-out, its ink vote and loss, and its use on panoramas."""
import pytest
import torch
import torch.nn.functional as F

from deqnca.core.readout import ink_mask, ink_vote, per_cell_loss
from deqnca.tasks.mnist.label_maps import panorama_accuracy
from deqnca.tasks.mnist.model import EquilibriumModel, count_parameters

CELL = dict(rule="contractive_tanh", solver="fixed_point", solver_kw={"max_iter": 30, "tol": 1e-4},
            gradient="implicit", gradient_kw={"b_max_iter": 30})


def test_ink_vote_averages_only_ink_cells_and_falls_back_to_all_cells():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 0, 0, 0] = 4.0          # the only ink cell of image 0 says class 0
    logits[0, 2, 1, 1] = 100.0        # a background cell shouting class 2 must not count
    logits[1, 1] = 1.0                # image 1 has no ink: all cells vote
    mask = torch.zeros(2, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    vote = ink_vote(logits, mask)
    assert vote[0].tolist() == [4.0, 0.0, 0.0]
    assert vote[1].tolist() == [0.0, 1.0, 0.0]
    x = torch.tensor([[[[0.0, 0.5], [0.05, 1.0]]]])
    assert ink_mask(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_per_cell_loss_is_the_mean_cross_entropy_over_ink_cells():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 3, 3), torch.tensor([1, 3])
    mask = (torch.rand(2, 1, 3, 3) > 0.5).float()
    ce = torch.stack([F.cross_entropy(logits[b, :, i, j][None], labels[b:b + 1])
                      for b in range(2) for i in range(3) for j in range(3) if mask[b, 0, i, j]])
    assert torch.allclose(per_cell_loss(logits, labels, mask), ce.mean(), atol=1e-6)


def test_cell_model_has_the_same_parameters_and_answers_per_cell_and_per_image():
    torch.manual_seed(0)
    glob, cell = EquilibriumModel(CELL), EquilibriumModel({**CELL, "readout": "cell"})
    assert count_parameters(glob) == count_parameters(cell)
    x = torch.rand(2, 1, 12, 12)
    cells = cell(x, per_cell=True)
    assert cells.shape == (2, 10, 12, 12)
    loss = per_cell_loss(cells, torch.tensor([3, 7]), ink_mask(x))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())
    assert cell(x).shape == (2, 10)
    with pytest.raises(ValueError, match="readout='cell'"):
        glob(x, per_cell=True)
    with pytest.raises(ValueError, match="unknown readout"):
        EquilibriumModel({**CELL, "readout": "pixel"})


def test_panorama_scores_a_cell_model_by_its_ink_vote():
    torch.manual_seed(0)
    cell = EquilibriumModel({**CELL, "readout": "cell"})
    images, labels = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    r = panorama_accuracy(cell, images, labels, n=2, size=84, per_canvas=2)
    assert r["window"] == 1 and r["digits"] == 4 and 0 <= r["accuracy"] <= 1
