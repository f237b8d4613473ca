"""The attacks on self-classifying digits (tasks/cells/attacks.py), on hand-made rules whose behaviour is known
exactly: a flood of the maximum (one strong cell takes the whole digit), a draining flood (it takes the cells
within two steps, then gives them back), rules that ignore their neighbours; the mutation's pairing; pieces;
strays."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from deqnca.tasks.cells import attacks

torch.set_num_threads(1)
LINE = 10                                   # the hand-made digits: one row of LINE cells


def _evidence(x):
    """Each alive cell's evidence: its grey value in the channel of class round(10·grey) (0.5 -> 5, 0.9 -> 9)."""
    cls = (x[:, 0] * 10).round().long().clamp(0, 9)
    return F.one_hot(cls, 10).permute(0, 3, 1, 2).to(x.dtype) * x * (x > 0.1)


class Flood:
    """y' = max(own evidence, the largest y among the alive 3×3 neighbours − eps) on alive cells: eps 0 never
    forgets a value; eps > 0 drains it by eps per step (the consensus rule's flood)."""

    def __init__(self, eps=0.0):
        self.eps = eps

    def alive(self, x):
        return x > 0.1

    def initial_state(self, x):
        return _evidence(x)

    def step_map(self, x, generator=None):
        s, alive = _evidence(x), self.alive(x)
        return lambda y: torch.where(alive, torch.maximum(s, F.max_pool2d(
            torch.where(alive, y, torch.full_like(y, -9.0)), 3, 1, 1) - self.eps), torch.zeros_like(y))

    def logits(self, y):
        return y


class Still(Flood):
    """z' = z: hears nobody, forgets nothing."""

    def step_map(self, x, generator=None):
        return lambda z: z


class Own(Flood):
    """z' = own evidence: hears nobody, recomputes its state from its input every step."""

    def step_map(self, x, generator=None):
        return lambda z: _evidence(x)


class Noisy(Flood):
    """z' = z + noise drawn from the rollout's generator, per cell: hears nobody, drifts by itself."""

    def step_map(self, x, generator=None):
        return lambda z: z + 0.3 * torch.randn(z.shape, generator=generator, dtype=z.dtype) * self.alive(x)


def _digits(*greys):
    x = torch.zeros(len(greys), 1, 6, 14)
    for i, g in enumerate(greys):
        x[i, 0, 2, 2:2 + LINE] = g
    return x


def _attack(rule, greys=(0.5, 0.9), labels=(5, 9), **kw):
    kw = {"at": 3, "horizon": 8, "cells_per_digit": 3, "device": "cpu", **kw}
    return attacks.single_cell_attack(SimpleNamespace(rule=rule), _digits(*greys), torch.tensor(labels), **kw)


def test_a_flood_of_the_maximum_lets_one_strong_cell_take_the_whole_digit_and_a_weak_one_nothing():
    r = _attack(Flood())
    weak, strong = r["per_digit"]           # digit 0 (0.5) gets a 0.9 cell; digit 1 (0.9) gets a 0.5 cell
    assert weak["peak"] == [1.0] * 3 and weak["recovery"] == [None] * 3          # every cell flips, for good
    assert strong["peak"] == [pytest.approx(1 / LINE)] * 3 and strong["recovery"] == [1] * 3
    assert weak["drift"] == strong["drift"] == 0.0 and r["never"] == 3 and r["recovered"] == 3
    assert r["peak_flipped"] == pytest.approx((1 + 1 / LINE) / 2) and r["recovery_steps"] == r["recovery_max"] == 1
    assert r["curve"]["unattacked"] == [0.0] * 9


def test_a_draining_flood_takes_the_cells_within_two_steps_and_gives_them_back_after_three():
    r = _attack(Flood(eps=0.15), cells_per_digit=4)
    weak = r["per_digit"][0]
    for k, (row, col, _, _) in enumerate(weak["cells"]):
        assert row == 2
        near = sum(abs(c - col) <= 2 for c in range(2, 2 + LINE))     # 0.9, 0.75, 0.6 beat 0.5; 0.45 does not
        assert weak["peak"][k] == pytest.approx(near / LINE) and weak["recovery"][k] == 3
    assert len({c[1] for c in weak["cells"]}) == 4                      # different cells while there are
    assert r["per_digit"][1]["recovery"] == [1] * 4 and r["recovery_max"] == 3


def test_rules_that_ignore_their_neighbours_flip_one_cell_only():
    still, own = _attack(Still()), _attack(Own())
    for r in (still, own):
        assert r["peak_flipped"] == pytest.approx(1 / LINE) and r["worst_peak_flipped"] == pytest.approx(1 / LINE)
        assert r["drift"] == 0.0
    assert still["never"] == 6 and still["recovery_steps"] is None                 # it keeps the wrong state
    assert own["never"] == 0 and own["recovery_steps"] == 1                        # it recomputes it


def test_the_attacked_and_unattacked_copies_draw_the_same_random_stream():
    r = _attack(Noisy(), horizon=40)
    assert r["drift"] > 0.3                     # the noise flips cells by itself...
    assert r["peak_excess"] <= 1 / LINE + 1e-6  # ...identically in both copies but for the attacked cell
    again = _attack(Noisy(), horizon=40)
    assert again["per_digit"] == r["per_digit"]


def test_the_donor_is_a_digit_of_another_label_and_its_cell_says_another_class():
    r = _attack(Flood(), greys=(0.5, 0.5, 0.9, 0.7), labels=(5, 5, 9, 7))
    for d in r["per_digit"]:
        assert d["label"] != r["per_digit"][d["donor"]]["label"] and d["alive"] == LINE
        assert all(p >= 1 / LINE - 1e-6 for p in d["peak"])            # the transplanted cell itself flips


def test_the_mutation_pairs_only_digits_of_different_labels_each_once():
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 7, 50, 101):
        for _ in range(20):
            y = torch.randint(0, 1 + int(torch.randint(1, 10, (1,), generator=g)), (n,), generator=g)
            if len(y.unique()) < 2 or 2 * y.bincount().max() > n:
                continue
            p = attacks.pair_different_labels(y, seed=int(torch.randint(100, (1,), generator=g)))
            assert sorted(p.tolist()) == list(range(n)) and bool((y[p] != y).all())
    assert not torch.equal(attacks.pair_different_labels(torch.arange(40) % 10, 0),
                           attacks.pair_different_labels(torch.arange(40) % 10, 1))
    with pytest.raises(ValueError, match="every digit has label 4"):
        attacks.pair_different_labels(torch.full((6,), 4))
    with pytest.raises(ValueError, match="more than half"):
        attacks.pair_different_labels(torch.tensor([1, 1, 1, 2]))


def _mask(text):
    return torch.tensor([[c == "#" for c in row] for row in text.split()])[None]


def test_pieces_on_hand_drawn_masks():
    cases = [("#.. .#. ..#", 1, 3), ("##. ... .##", 2, 2), ("### #.# ###", 1, 1), ("... ... ...", 0, 0),
             ("#.#.# ..... #.#.#", 6, 6), (".#. #.# .#.", 1, 4)]
    for text, eight, four in cases:
        ids, n = attacks.pieces(_mask(text))
        assert n.item() == eight, text
        assert attacks.pieces(_mask(text), connectivity=4)[1].item() == four, text
        assert ((ids > 0) == _mask(text)).all()
    ids, _ = attacks.pieces(_mask("##.. ...# ..## ...."))
    assert ids[0, 0, 0] == ids[0, 0, 1] != ids[0, 1, 3] == ids[0, 2, 2]
    with pytest.raises(ValueError):
        attacks.pieces(_mask("#"), connectivity=6)


def test_the_piece_split_puts_digits_in_several_pieces_apart():
    x = torch.zeros(6, 1, 8, 8)
    x[:, 0, 1:6, 3] = 0.5                    # a bar of class 5, all digits
    x[3:, 0, 1:3, 6] = 0.7                   # digits 3-5: a second piece, of class 7
    r = attacks.piece_split(SimpleNamespace(rule=Flood()), x, torch.full((6,), 5), n=2, steps=4, device="cpu")
    assert r["multi_share"] == 0.5 and r["connectivity"] == 8
    assert r["single"] == {"digits": 2, "agreement": 1.0, "accuracy": 1.0}
    assert r["multi"] == {"digits": 2, "agreement": 0.0, "accuracy": pytest.approx(5 / 7)}


def test_strays_lie_three_pixels_from_the_ink_and_from_each_other():
    x = torch.zeros(20, 1, 28, 28)
    x[:, 0, 8:20, 10:16] = torch.rand(20, 12, 6)          # ink, faint pixels too
    xs, s = attacks.add_strays(x, seed=3)
    assert (s.sum(dim=(1, 2)) == 3).all() and (xs[:, 0][s] == 1).all() and torch.equal(xs[:, 0][~s], x[:, 0][~s])
    for i in range(len(x)):
        ink, st = torch.nonzero(x[i, 0] > 0), torch.nonzero(s[i])
        assert (st[:, None] - ink[None]).abs().amax(2).min() >= 3
        gaps = (st[:, None] - st[None]).abs().amax(2) + 99 * torch.eye(3, dtype=torch.long)
        assert gaps.min() >= 3
    assert torch.equal(attacks.add_strays(x, seed=3)[1], s) and not torch.equal(attacks.add_strays(x, seed=4)[1], s)
    with pytest.raises(ValueError, match="no place"):
        attacks.add_strays(torch.ones(1, 1, 5, 5))


def test_strays_count_against_a_digit_only_where_they_say_another_label():
    x = _digits(0.5, 0.5)
    r = attacks.stray_pixels(SimpleNamespace(rule=Own()), x, torch.tensor([5, 9]), steps=2, device="cpu")
    assert r["agreement"] == {"clean": 0.5, "ink_only": 0.5, "with_strays": 0.0}
    assert r["strays_right"] == 0.5          # a stray (grey 1) says 9: digit 1's label, not digit 0's
    assert r["accuracy"]["ink_only"] == 0.5


def test_cells_eval_runs_the_attacks_and_the_mutation_of_different_labels(tmp_path, capsys, monkeypatch):
    from deqnca.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")          # two threads on a shared machine: many times slower
    out = tmp_path / "e.json"
    assert main(["cells", "eval", "cells/equilibrium", "--images", "6", "--marks", "200", "--mutation",
                 "--attacks", "--attack-digits", "6", "--attack-horizon", "3", "--attack-cells", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one cell: peak share flipped" in text and "mutation: at step 200 every digit" in text
    result = json.loads(out.read_text())
    assert result["attacks"]["single_cell"]["digits"] == 6 and result["attacks"]["pieces"]["multi"]["digits"] == 6
    assert sorted(result["mutation"]["new_index"]) == list(range(6))
