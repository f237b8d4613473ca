"""Attacks on self-classifying digits (docs/cells.md, "Attacks"): how far one wrong cell, a few stray pixels
or a digit in several pieces move a model's labels. Measurements only, for any cells model (its rule's
alive, initial_state, step_map and logits).

- `single_cell_attack`: after `at` steps one alive cell's whole state is replaced by the state of an alive
  cell of another digit with a different label (that digit's own state at step `at`, same model); the
  rollout goes on with the same input and the same random stream as an unattacked copy, whose changes
  are the model's own drift;
- `stray_pixels`: isolated ink pixels added from the start, agreement on the original ink and with them;
- `piece_split`: agreement of digits whose ink is one 8-connected piece against those in several;
- `pair_different_labels`: the mutation test's pairing, every digit paired with one of another label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deqnca.tasks.cells import model as cells

AT = cells.MUTATE_AT        # the attack comes when the article's table is read: the state has settled
HORIZON = 400
CELLS = 4                   # attacked cells per digit: each a random alive cell, the worst of them reported too
STRAYS, GAP = 3, 3


def _device(model, device):
    return device or next(iter(model.parameters()), torch.zeros(0)).device


def pair_different_labels(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) long: a permutation p with labels[p[i]] != labels[i] for every i, random with `seed`.

    The labels' groups are laid end to end in a random order (each shuffled) and every digit is paired with
    the one m places further round, m the largest group: a group is never longer than m, so no digit lands
    in its own. Each digit is used once, so a model with one fixed point per input scores the paired set
    as the unpaired one. Impossible (ValueError) with one label, or one label on more than half the digits.

    Example:
        >>> y = torch.tensor([3, 3, 5, 7])
        >>> p = pair_different_labels(y)
        >>> bool((y[p] != y).all()), sorted(p.tolist())
        (True, [0, 1, 2, 3])
    """
    labels = torch.as_tensor(labels).cpu()
    values, sizes = labels.unique(return_counts=True)
    if len(values) < 2:
        raise ValueError(f"every digit has label {int(values[0]) if len(values) else '?'}: no digit of another "
                         "label to pair with; give digits of at least two labels")
    m = int(sizes.max())
    if 2 * m > len(labels):
        raise ValueError(f"label {int(values[sizes.argmax()])} has {m} of the {len(labels)} digits: more than "
                         "half, so they cannot all get a digit of another label once each; give more digits")
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.nonzero(labels == values[v])[:, 0][torch.randperm(int(sizes[v]), generator=g)]
                       for v in torch.randperm(len(values), generator=g)])
    pairs = torch.empty_like(order)
    pairs[order] = order.roll(-m)
    return pairs


def _near(ids, connectivity):
    """The largest id among each cell and its 4 or 8 neighbours, by shifts (max_pool2d is ~6× slower on a CPU)."""
    p = F.pad(ids, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]), ids)
    if connectivity == 4:
        return torch.maximum(torch.maximum(rows, p[:, 1:-1, :-2]), p[:, 1:-1, 2:])
    r = F.pad(rows, (1, 1))
    return torch.maximum(torch.maximum(r[:, :, :-2], r[:, :, 2:]), rows)


def pieces(mask: torch.Tensor, connectivity: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, H, W) long, counts (B,) long): each True cell's piece (the largest flat index + 1 in it;
    0 on False cells) and the number of pieces per image, 8- or 4-connected. A flood of the maximum, each
    cell also taking the label of the cell its label names (pointer jumping: about half the rounds; a
    label only ever names a cell of its piece, whose label is as large), on the images still changing.

    Example:
        >>> m = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=torch.bool)
        >>> pieces(m)[1].item(), pieces(m, connectivity=4)[1].item()
        (1, 2)
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity {connectivity}: 4 or 8")
    b, h, w = mask.shape
    own = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    ids = torch.where(mask, own, torch.zeros_like(own))
    active = torch.arange(b, device=mask.device)
    while len(active):
        cur, m = ids[active], mask[active]
        nxt = torch.where(m, _near(cur, connectivity), cur)
        named = torch.gather(nxt.flatten(1), 1, (nxt.flatten(1).long() - 1).clamp(min=0)).view_as(nxt)
        nxt = torch.where(m, named, nxt)
        ids[active] = nxt
        active = active[(nxt != cur).flatten(1).any(1)]
    return ids.long(), (mask & (ids == own)).sum(dim=(1, 2))


def add_strays(x: torch.Tensor, n: int = STRAYS, gap: int = GAP, seed: int = 0, value: float = 1.0):
    """(x with strays, strays (B, H, W) bool): `n` pixels of grey `value` per image, each at Chebyshev distance
    ≥ `gap` from every inked pixel (grey > 0) and from the other strays, at random (seeded) among those
    places. At gap 3 no stray is in an ink cell's 5×5 neighbourhood (the widest a rule reads the input in
    one step) nor it in theirs, and each is a piece of its own.

    Example:
        >>> x = torch.zeros(1, 1, 12, 12); x[0, 0, 5, 5] = 1
        >>> xs, s = add_strays(x, n=2)
        >>> int(s.sum()), bool((s.nonzero()[:, 1:] - 5).abs().amax(1).ge(3).all())
        (2, True)
    """
    g = torch.Generator().manual_seed(seed)
    out, strays = x.clone(), torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
    near = F.max_pool2d((x[:, :1] > 0).float().cpu(), 2 * gap - 1, 1, gap - 1)[:, 0] > 0
    for i in range(x.shape[0]):
        for _ in range(n):
            free = torch.nonzero(~near[i])
            if not len(free):
                raise ValueError(f"image {i}: no place {gap} pixels away from its ink for {n} strays")
            r, c = free[torch.randint(len(free), (1,), generator=g)][0].tolist()
            strays[i, r, c] = True
            near[i, max(0, r - gap + 1):r + gap, max(0, c - gap + 1):c + gap] = True
    out[:, 0][strays.to(x.device)] = value
    return out, strays


# --- rollouts ---------------------------------------------------------------------------------------------

def _truth(rule, x, labels):
    alive = rule.alive(x)[:, 0]
    return torch.where(alive, labels.to(x.device).view(-1, 1, 1).long(), torch.full_like(alive, -1, dtype=torch.long))


def _roll(rule, x, steps, gen, z=None):
    f = rule.step_map(x, gen)
    z = rule.initial_state(x) if z is None else z
    for _ in range(steps):
        z = f(z)
    return z


def _shares(rule, x, f, z, steps, before):
    """(steps + 1, B): the share of each digit's alive cells whose label is not `before`, after 0..steps of
    the map f from z."""
    alive, out = rule.alive(x)[:, 0], []
    for t in range(steps + 1):
        if t:
            z = f(z)
        changed = (rule.logits(z).argmax(1) != before) & alive
        out.append(changed.sum(dim=(1, 2)) / alive.sum(dim=(1, 2)).clamp(min=1))
    return torch.stack(out).cpu()


def _choose_cells(alive, pred, donors, cells_per_digit, seed):
    """Per digit and attack k: the attacked cell (a random alive cell, different ones while there are) and
    the donor cell (a random alive cell of the donor digit whose label differs from the attacked cell's, any
    of them where none does). Returns (N, K, 4) long: row, column, donor row, donor column."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(alive), cells_per_digit, 4, dtype=torch.long)
    for i in range(len(alive)):
        mine = torch.nonzero(alive[i])
        if not len(mine):
            raise ValueError(f"digit {i} has no alive cell to attack")
        mine = mine[torch.randperm(len(mine), generator=g)]
        theirs = torch.nonzero(alive[donors[i]])
        for k in range(cells_per_digit):
            r, c = mine[k % len(mine)].tolist()
            other = theirs[pred[donors[i]][theirs[:, 0], theirs[:, 1]] != pred[i, r, c]]
            pool = other if len(other) else theirs
            out[i, k] = torch.tensor([r, c, *pool[torch.randint(len(pool), (1,), generator=g)][0].tolist()])
    return out


def _recovery(attacked, drift):
    """Steps after the attack until the share of changed cells stays within the unattacked copy's largest
    (its drift) to the horizon: 0 if it never left it, None if it is still out at the horizon."""
    out = attacked > drift + 1e-9
    if not out.any():
        return 0
    if out[-1]:
        return None
    return int(torch.nonzero(out)[-1]) + 1


@torch.no_grad()
def single_cell_attack(model, x, labels, at: int = AT, horizon: int = HORIZON, cells_per_digit: int = CELLS,
                       seed: int = 0, batch_size: int = 256, device=None) -> dict:
    """Roll every digit out `at` steps; then, K times per digit, replace one alive cell's whole state by a
    donor cell's (`_choose_cells`; the donor digit: `pair_different_labels`) and roll `horizon` more steps,
    beside an unattacked copy, all from the same random stream (batch b: seed·1,000,003 + b, as `evaluate`).

    Returns {"peak_flipped": the mean over the N·K attacks of the largest share of the digit's alive cells
    whose label differs from its label at step `at`; "worst_peak_flipped": the mean over digits of the
    largest of its K; "drift": the same largest share without an attack, mean over digits; "recovery_steps":
    the mean over the attacks that recovered (`_recovery`), "recovery_max", "recovered", "never";
    "peak_excess": the mean of the largest excess of an attack's share over the unattacked copy's at the
    same step; "per_digit": the numbers of every digit; "curve": the mean share after 0..horizon steps,
    attacked and not}.
    """
    rule, device = model.rule, _device(model, device)
    labels = torch.as_tensor(labels)
    donors = pair_different_labels(labels, seed)
    states, gens = [], []
    for b, start in enumerate(range(0, len(x), batch_size)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        states.append(_roll(rule, x[start:start + batch_size].to(device), at, gen))
        gens.append(gen.get_state())
    z_at = torch.cat(states)
    alive = rule.alive(x.to(device))[:, 0].cpu()
    pred = rule.logits(z_at).argmax(1)
    where = _choose_cells(alive, pred.cpu(), donors, cells_per_digit, seed)
    runs = [[] for _ in range(cells_per_digit + 1)]          # run 0: unattacked; run k: the k-th cell attacked
    for b, start in enumerate(range(0, len(x), batch_size)):
        sl = slice(start, min(len(x), start + batch_size))
        xb, gen = x[sl].to(device), torch.Generator(device=device)
        f, rows = rule.step_map(xb, gen), torch.arange(sl.stop - sl.start)    # one map: its weights normalised once
        for k, run in enumerate(runs):
            gen.set_state(gens[b])          # every copy draws the same random numbers
            z = z_at[sl].clone()
            if k:
                r, c, dr, dc = where[sl, k - 1].unbind(1)
                z[rows, :, r, c] = z_at[donors[sl], :, dr, dc]
            run.append(_shares(rule, xb, f, z, horizon, pred[sl]))
    base, hits = torch.cat(runs[0], 1), torch.stack([torch.cat(r, 1) for r in runs[1:]], 2)   # (T, N), (T, N, K)
    drift, peak = base.amax(0), hits.amax(0)
    recovery = [[_recovery(hits[:, i, k], drift[i]) for k in range(cells_per_digit)] for i in range(len(x))]
    done = [s for row in recovery for s in row if s is not None]
    return {"digits": len(x), "at": at, "horizon": horizon, "cells_per_digit": cells_per_digit,
            "peak_flipped": peak.mean().item(), "worst_peak_flipped": peak.amax(1).mean().item(),
            "drift": drift.mean().item(), "peak_excess": (hits - base[:, :, None]).amax(0).mean().item(),
            "recovery_steps": sum(done) / len(done) if done else None,
            "recovery_max": max(done) if done else None,
            "recovered": len(done), "never": peak.numel() - len(done),
            "curve": {"attacked": hits.mean((1, 2)).tolist(), "unattacked": base.mean(1).tolist()},
            "per_digit": [{"label": int(labels[i]), "donor": int(donors[i]), "alive": int(alive[i].sum()),
                           "drift": drift[i].item(), "peak": peak[i].tolist(), "recovery": recovery[i],
                           "cells": where[i].tolist()} for i in range(len(x))]}


def _counts(model, xs_and_truths, steps, seed, batch_size, device):
    """Summed `cells.count`s at `steps` per (input, truths) pair, every input rolled out from the same seeds:
    [(x, [truth, ...]), ...] -> [[counts per truth], ...]."""
    rule, out = model.rule, []
    for x, truths in xs_and_truths:
        total = [{} for _ in truths]
        for b, start in enumerate(range(0, len(x), batch_size)):
            sl = slice(start, min(len(x), start + batch_size))
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
            logits = rule.logits(_roll(rule, x[sl].to(device), steps, gen))
            for n, t in enumerate(truths):
                c = cells.count(logits, t[sl].to(device))
                total[n] = {k: total[n].get(k, 0) + v for k, v in c.items()}
        out.append(total)
    return out


@torch.no_grad()
def stray_pixels(model, x, labels, steps: int = AT, n: int = STRAYS, gap: int = GAP, seed: int = 0,
                 batch_size: int = 256, device=None) -> dict:
    """Total agreement and cell accuracy after `steps` steps: of the clean digits, and with `n` strays
    (`add_strays`) from the start, counted on the original ink cells only and with the strays; plus the
    share of strays that give their digit's label.

    Example:
        >>> x = torch.zeros(2, 1, 14, 14); x[:, 0, 6:9, 6:9] = 1
        >>> r = stray_pixels(cells.CellsModel({"rule": "selfclass"}), x, torch.tensor([1, 2]), steps=2)
        >>> sorted(r["agreement"])
        ['clean', 'ink_only', 'with_strays']
    """
    rule, device = model.rule, _device(model, device)
    xs, strays = add_strays(x, n, gap, seed)
    clean = _truth(rule, x.to(device), labels).cpu()
    (c,), (ink, full) = _counts(model, [(x, [clean]), (xs, [clean, _truth(rule, xs.to(device), labels).cpu()])],
                                steps, seed, batch_size, device)
    named = {"clean": c, "ink_only": ink, "with_strays": full}
    stray_cells = max(int(full["cells"]) - int(ink["cells"]), 1)
    return {"digits": len(x), "steps": steps, "strays": n, "gap": gap,
            "agreement": {k: cells.summarise(v)["agreement"] for k, v in named.items()},
            "accuracy": {k: cells.summarise(v)["accuracy"] for k, v in named.items()},
            "strays_right": (int(full["correct"]) - int(ink["correct"])) / stray_cells}


@torch.no_grad()
def piece_split(model, x, labels, n: int = 50, steps: int = AT, seed: int = 0, batch_size: int = 256,
                device=None) -> dict:
    """Agreement and cell accuracy after `steps` steps of `n` evenly spaced digits of x whose alive cells
    form one 8-connected piece and of `n` whose cells form several (every piece apart from the rest: no
    cell of one is among the 8 neighbours of another's; a rule that reads 3×3 neighbourhoods of the
    state cannot carry anything between them). Also the share of x's digits in several pieces."""
    rule, device = model.rule, _device(model, device)
    counts = torch.cat([pieces(rule.alive(x[s:s + 1024].to(device))[:, 0])[1].cpu()
                        for s in range(0, len(x), 1024)])
    out = {"connectivity": 8, "digits_scanned": len(x), "multi_share": (counts > 1).float().mean().item()}
    for name, keep in (("single", counts == 1), ("multi", counts > 1)):
        idx = torch.nonzero(keep)[:, 0]
        idx = idx[torch.linspace(0, len(idx) - 1, min(n, len(idx))).long()] if len(idx) else idx
        if not len(idx):
            out[name] = {"digits": 0, "agreement": None, "accuracy": None}
            continue
        ((c,),) = _counts(model, [(x[idx], [_truth(rule, x[idx].to(device), labels[idx]).cpu()])],
                          steps, seed, batch_size, device)
        out[name] = {"digits": len(idx), **{k: cells.summarise(c)[k] for k in ("agreement", "accuracy")}}
    return out


def run_attacks(model, x_test, y_test, size: int = 28, n: int = 50, horizon: int = HORIZON,
                cells_per_digit: int = CELLS, seed: int = 0, batch_size: int = 256, device=None) -> dict:
    """All three on a test split (28×28 digits, resized to `size`): the single-cell attack and the strays on
    `n` evenly spaced digits, the piece split on `n` single-piece and `n` multi-piece digits of the split.

    Example:
        >>> x = torch.zeros(4, 1, 14, 14); x[:, 0, 4:10, 5:8] = 1; x[3, 0, 12, 12] = 1
        >>> r = run_attacks(cells.CellsModel({"rule": "selfclass"}), x, torch.tensor([0, 1, 2, 3]), size=14,
        ...                 n=4, horizon=3, cells_per_digit=1)
        >>> sorted(r), r["pieces"]["multi"]["digits"]
        (['pieces', 'single_cell', 'strays'], 1)
    """
    device = _device(model, device)
    x_all = cells.resize_digits(x_test, size)
    idx = torch.linspace(0, len(x_all) - 1, min(n, len(x_all))).long()
    x, y = x_all[idx], y_test[idx]
    kw = {"seed": seed, "batch_size": batch_size, "device": device}
    return {"single_cell": single_cell_attack(model, x, y, horizon=horizon, cells_per_digit=cells_per_digit, **kw),
            "strays": stray_pixels(model, x, y, **kw),
            "pieces": piece_split(model, x_all, y_test, n=n, **kw)}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def attack_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table, one row per (model name, `run_attacks` result)."""
    cols = ["model", "digits", "one cell: peak share flipped", "worst of K cells",
            "recovery steps: mean / max (never)", "own drift", "peak excess over the unattacked copy",
            "agreement with strays: clean / ink only / with strays", "strays right",
            "agreement: one piece / several (8-connected)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in rows:
        a, s, p = r["single_cell"], r["strays"], r["pieces"]
        rec = "—" if a["recovery_steps"] is None else f"{a['recovery_steps']:.0f} / {a['recovery_max']}"
        agree = s["agreement"]
        lines.append("| " + " | ".join([
            name, str(a["digits"]), _pct(a["peak_flipped"]),
            f"{_pct(a['worst_peak_flipped'])} (K={a['cells_per_digit']})",
            f"{rec} ({a['never']} of {a['digits'] * a['cells_per_digit']})", _pct(a["drift"]), _pct(a["peak_excess"]),
            f"{_pct(agree['clean'])} / {_pct(agree['ink_only'])} / {_pct(agree['with_strays'])} ({s['strays']})",
            _pct(s["strays_right"]),
            f"{_pct(p['single']['agreement'])} ({p['single']['digits']}) / {_pct(p['multi']['agreement'])} "
            f"({p['multi']['digits']}; {_pct(p['multi_share'])} of {p['digits_scanned']:,})"]) + " |")
    return "\n".join(lines) + "\n"
