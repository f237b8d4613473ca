"""Panoramas are deterministic and non-overlapping; models accept any input size; local read-out
gives a label per cell."""
import torch

from deqnca.tasks.mnist.label_maps import label_maps, panorama_accuracy
from deqnca.tasks.mnist.model import EquilibriumModel
from deqnca.tasks.mnist.panoramas import make_panoramas


def _digits(n=50):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_panoramas_deterministic_and_non_overlapping():
    x, y = _digits()
    a = make_panoramas(x, y, 5, size=84, per_canvas=3, seed=1)
    b = make_panoramas(x, y, 5, size=84, per_canvas=3, seed=1)
    c = make_panoramas(x, y, 5, size=84, per_canvas=3, seed=2)
    assert all(torch.equal(p.canvas, q.canvas) and p.digits == q.digits for p, q in zip(a, b))
    assert any(p.digits != q.digits for p, q in zip(a, c))
    for p in a:
        assert p.canvas.shape == (1, 84, 84) and len(p.digits) == 3
        for i, (_, r, c_, idx) in enumerate(p.digits):
            assert torch.equal(p.canvas[0, r:r + 28, c_:c_ + 28], x[idx, 0])     # digit at its box
            for _, r2, c2, _ in p.digits[i + 1:]:
                assert abs(r - r2) >= 28 or abs(c_ - c2) >= 28


def test_any_input_size_and_label_maps():
    m = EquilibriumModel(dict(solver="rollout", gradient="bptt", solver_kw={"max_iter": 4})).eval()
    for size in (8, 37, 512):
        with torch.no_grad():
            logits = m(torch.rand(1, 1, size, size))
        assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    labels, logits = label_maps(m, torch.rand(2, 1, 84, 84), window=28)
    assert labels.shape == (2, 84, 84) and logits.shape == (2, 10, 84, 84)


def test_panorama_accuracy_counts_every_digit():
    x, y = _digits()
    m = EquilibriumModel(dict(solver="rollout", gradient="bptt", solver_kw={"max_iter": 2})).eval()
    r = panorama_accuracy(m, x, y, n=4, size=84, per_canvas=3, window=28)
    assert r["digits"] == 12 and 0 <= r["accuracy"] <= 1


def test_hostile_inputs_get_one_line_errors():
    import pytest

    m = EquilibriumModel(dict(solver="rollout", gradient="bptt", solver_kw={"max_iter": 2})).eval()
    bad = [torch.rand(28, 28), torch.rand(2, 3, 28, 28), torch.rand(1, 1, 2, 2),
           torch.full((1, 1, 8, 8), float("nan"))]
    for x in bad:
        with pytest.raises(ValueError) as e:
            m(x)
        assert "\n" not in str(e.value)
