"""The consensus rule's confirmed flood (`confirm=2`): a cell hears the second largest of its alive neighbours,
so one cell's value reaches no one, and the fixed point is still unique and exact (its blocked solve and gradient:
tests/test_cells.py, parametrised by `confirm`)."""
import pytest
import torch

from deqnca.tasks.cells.rule_consensus import (
    _flood,
    flood_with_sources,
    neighbours,
    second_largest_neighbour,
    second_largest_neighbour_value,
)


def _blob(h=12, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    alive = torch.zeros(1, 1, h, w, dtype=torch.bool)
    alive[0, 0, 2:10, 3:9] = True                      # a thick block ...
    alive[0, 0, 5:7, 1:11] = True                      # ... a bar through it
    alive &= torch.rand(1, 1, h, w, generator=g) > 0.1   # and holes
    return alive


def test_the_second_largest_neighbour_leaves_the_cell_and_the_outside_out():
    v = torch.full((1, 1, 3, 3), -10.0)
    v[0, 0, 1, 1] = 5.0                                  # the cell itself: never counted
    v[0, 0, 0, 0], v[0, 0, 2, 2] = 0.7, 0.3
    values, which = second_largest_neighbour(v)
    assert values[0, 0, 1, 1] == pytest.approx(0.3) and which[0, 0, 1, 1] == 7      # (2, 2): the 8th neighbour
    assert values[0, 0, 0, 0] == pytest.approx(-10.0)    # its neighbours: the cell (5.0) and dead ones
    wide, which = second_largest_neighbour(v, reach=2)   # 24 neighbours: the 0.7 and the 0.3 again at the centre
    assert wide[0, 0, 1, 1] == pytest.approx(0.3) and neighbours(2)[which[0, 0, 1, 1]] == (1, 1)


@pytest.mark.parametrize("reach", [1, 2])
def test_the_running_top_two_is_the_sorted_second_largest(reach):
    v = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(reach))
    assert torch.equal(second_largest_neighbour_value(v, reach), second_largest_neighbour(v, reach)[0])


@pytest.mark.parametrize("reach", [1, 2])
def test_one_cell_carries_its_value_to_no_neighbour_under_confirm_2_and_to_all_under_the_max(reach):
    alive = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    alive[0, 0, 1:7, 1:7] = True
    s = torch.full((1, 1, 8, 8), -0.5)
    calm = torch.where(alive, s, torch.zeros_like(s))     # the fixed point: every cell its own evidence
    assert torch.equal(_flood(calm, s, alive, 0.05, confirm=2, reach=reach), calm)
    attacked = calm.clone()
    attacked[0, 0, 3, 3] = 1.0                           # one cell says the wrong thing as loud as it can
    confirmed = _flood(attacked, s, alive, 0.05, confirm=2, reach=reach)
    assert torch.equal(confirmed, calm)                  # nobody heard it, and the cell itself is back
    flooded = _flood(attacked, s, alive, 0.05, confirm=1, reach=reach)
    k = 2 * reach + 1                                    # the max-plus flood: the k×k around it took it
    assert (flooded[0, 0, 3 - reach:4 + reach, 3 - reach:4 + reach] > 0.9).sum() == k * k


@pytest.mark.parametrize("seed,reach", [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2)])
def test_the_confirmed_flood_reaches_one_fixed_point_from_any_state(seed, reach):
    alive = _blob(seed=seed).expand(1, 3, 12, 12)
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(1, 3, 12, 12, generator=g) * 1.8 - 0.9
    y_star, src, steps = flood_with_sources(s, alive, 0.05, confirm=2, reach=reach)
    assert torch.equal(_flood(y_star, s, alive, 0.05, confirm=2, reach=reach), y_star)       # exactly a fixed point
    picked = torch.gather(s.flatten(2), 2, src.flatten(2)).view_as(s)
    hops = (picked - y_star)[alive] / 0.05                # y* = s(src) − ε·hops
    assert torch.allclose(hops, hops.round(), atol=1e-3) and (hops.round() >= 0).all()
    for start in range(3):
        y = torch.rand(1, 3, 12, 12, generator=g) * 2 - 1
        for _ in range(2 * int(2 / 0.05) + 144):          # drain (2/ε) and rise (one cell per step), with room
            y = _flood(y, s, alive, 0.05, confirm=2, reach=reach)
        assert torch.allclose(y, y_star, atol=1e-6), (start, (y - y_star).abs().max())


def test_confirm_takes_1_or_2():
    from deqnca.tasks.cells.model import CellsModel

    with pytest.raises(ValueError, match="confirm 3"):
        CellsModel({"rule": "selfclass_consensus", "rule_kw": {"confirm": 3}})


def test_a_run_starts_from_another_runs_weights_with_the_flood_confirmed(tmp_path, mnist_small):
    """--init-from: the weights of a run with the plain flood seed a run with rule.confirm=2; another rule is
    refused in one line."""
    from deqnca import fit, load
    from deqnca.tasks.cells.config import preset
    from deqnca.tasks.cells.task import CellsTask

    x, y, xt, yt = mnist_small
    data = (x[:16], y[:16], xt[:4], yt[:4])
    small = dict(size=14, steps=2, batch_size=4, train_images=16, eval_images=4, eval_every=0, eval_marks=[2])
    fit(CellsTask(preset("consensus", **small), data), tmp_path / "plain", progress=False)
    source, _ = load(tmp_path / "plain" / "last", kind="cells")
    cfg = preset("consensus", **{**small, "steps": 1, "lr": 0.0}, rule={"confirm": 2},
                 init_from=str(tmp_path / "plain" / "last"))
    fit(CellsTask(cfg, data), tmp_path / "confirmed", progress=False)
    model, meta = load(tmp_path / "confirmed" / "last", kind="cells")
    assert model.rule.confirm == 2 and meta["train_config"]["init_from"].endswith("last")
    ours = dict(model.rule.named_parameters())
    for name, p in source.rule.named_parameters():          # lr 0: the copied weights, unchanged
        assert torch.equal(p, ours[name]), name
    with pytest.raises(ValueError, match="init-from .* same --model"):
        fit(CellsTask(preset("equilibrium", **small, init_from=cfg.init_from), data), tmp_path / "other",
            progress=False)
