"""Self-classifying digits: the protocol, the metrics and the streaming evaluation (torch only).

The task of Randazzo et al. (Distill 2020, distill.pub/2020/selforg/mnist): every cell of a grid sees
one immutable grey value x; the cells on the ink (x > 0.1, "alive") must come to agree, by talking to
their neighbours only, on which digit they form. Dead cells never change and hold no label. The labels
are read from every alive cell (argmax of its 10 label scores).

Metrics, as the article's evaluation code computes them, but exact (integer counts over the whole set):
- average cell accuracy: the share of alive cells whose label is right (over all cells of all digits);
- total agreement: the share of digits whose alive cells ALL output the same, right label
  (`unanimity` is the weaker "all the same label", which the article's notebook counts);
- per-digit accuracy: the mean over digits of each digit's share of right cells (canvases).

A digit is a *segment*: the alive cells of one image, or of one digit's box on a canvas holding several
(`canvas_batch`), each read by its own cells. Evaluation rolls the CA out once per batch and records
these counts after every step, keeping one state per batch (bounded memory at 10,000 steps), plus the
relative residual ‖g(z) − z‖ / ‖g(z)‖ of the deterministic map g at each mark. The mutation test
replaces each digit by another after `at` steps, keeps the state where the new digit is alive, and runs
`after` more steps, scored against the new labels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from deqnca.core.model import MODELS, CellularModel
from deqnca.core.registry import Registry
from deqnca.tasks.cells.digits import (  # noqa: F401  (re-exported)
    ALIVE_THRESHOLD,
    LOSSES,
    alive_mask,
    canvas_batch,
    ce_loss,
    l2_loss,
    resize_digits,
    single_segments,
    truth_map,
)
from deqnca.tasks.cells.rule_article import SelfClassifyingRule
from deqnca.tasks.cells.rule_consensus import ConsensusCellsRule
from deqnca.tasks.cells.rule_equilibrium import ContractiveCellsRule

# the self-classifying rules' own protocol (not `bind`: they read the digit as read-only channels)
CELL_RULES = Registry("self-classifying rule", "an nn.Module(**rule_kw) with alive(x), initial_state(x), "
                      "step_map(x, generator), expected_map(x) and logits(z)")
CELL_RULES.register("selfclass", SelfClassifyingRule)                  # the article's rule (BPTT)
CELL_RULES.register("selfclass_contractive", ContractiveCellsRule)     # its contraction (equilibrium model)
CELL_RULES.register("selfclass_consensus", ConsensusCellsRule)         # contraction + max-plus flood (consensus)

CLASSES = 10
MARKS = (20, 80, 200, 1000, 10000)
MUTATE_AT = 200
# the two models: the article's rule (BPTT) and the contraction (equilibrium)
MODEL_RULES = {"article": "selfclass", "equilibrium": "selfclass_contractive", "consensus": "selfclass_consensus"}


@dataclass
class CellsModelConfig:
    """Which rule (a registered name) with which settings; round-trips through checkpoints.

    Example:
        >>> CellsModelConfig.from_dict({"rule": "selfclass"}).rule_kw
        {}
    """
    rule: str = "selfclass"
    rule_kw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> CellsModelConfig:
        """The config from a plain dict; unknown keys are an error."""
        from deqnca.core.configs import load_dataclass

        return load_dataclass(cls, d, what="cells model config")

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict."""
        return asdict(self)


@MODELS.register("cells")
class CellsModel(CellularModel):
    """A self-classifying cellular automaton: a rule with `alive`, `initial_state`, `step_map(x, gen)`,
    `expected_map(x)` and `logits(z)` (`CELL_RULES`: rule_article.py, rule_equilibrium.py, rule_consensus.py).

    The model kind ``"cells"`` (`CellularModel`): `x` is a batch of grey digits (B, 1, H, W), the cells'
    immutable input; `initial_state` is the rule's (zeros on the digit's cells); `step_map` is one step of
    the rule (stochastic for the article's rule: `generator` draws its fire masks); `read` gives every
    cell's label scores (B, 10, H, W); `solve` rolls the rule out for `max_iter` steps (default 200, the
    article's evaluation mark).

    Example:
        >>> model = CellsModel({"rule": "selfclass"})
        >>> z = model.rollout(torch.rand(2, 1, 14, 14), steps=3)
    """

    Config = CellsModelConfig

    def __init__(self, config: CellsModelConfig | dict):
        super().__init__()
        self.config = config if isinstance(config, CellsModelConfig) else CellsModelConfig.from_dict(config)
        rule_cls = CELL_RULES.get(self.config.rule)
        try:
            self.rule = rule_cls(**self.config.rule_kw)
        except TypeError as e:
            raise ValueError(f"rule {self.config.rule!r} does not take these settings ({e}); check rule_kw") from None
        for name in ("alive", "initial_state", "step_map", "expected_map", "logits"):
            if not callable(getattr(self.rule, name, None)):
                raise ValueError(f"rule {self.config.rule!r} has no {name}(); a self-classifying rule needs "
                                 "alive, initial_state, step_map, expected_map and logits")

    def initial_state(self, x, generator=None):
        """The rule's initial state for digits x (deterministic: `generator` is not used)."""
        return self.rule.initial_state(x)

    def step_map(self, x, generator=None):
        """One step of the rule on digits x; `generator` draws a stochastic rule's fire masks."""
        return self.rule.step_map(x, generator)

    def read(self, z, x):
        """(B, 10, H, W): every cell's label scores."""
        return self.rule.logits(z)

    def solve(self, x, z0=None, generator=None, max_iter: int = 200, **_):
        """(z, stats): the state after `max_iter` steps of the CA from `z0` (default: the initial state)."""
        from deqnca.core.solvers import rollout

        f = self.step_map(x, generator)
        return rollout(f, self.initial_state(x, generator) if z0 is None else z0, max_iter, measure=False)

    @classmethod
    def describe_config(cls, config) -> str:
        model = {rule: name for name, rule in MODEL_RULES.items()}.get(config.rule, config.rule)
        return f"self-classifying CA ({model} model)"

    def rollout(self, x, steps: int, generator=None, z0=None):
        """The state after `steps` steps of the CA from `z0` (default: the rule's initial state)."""
        return self.solve(x, z0, generator, max_iter=steps)[0]

    def forward(self, x, steps: int = 200, generator=None):
        """Per-cell label scores (B, 10, H, W) after `steps` steps."""
        return self.read(self.rollout(x, steps, generator), x)


# --- metrics --------------------------------------------------------------------------------------------

class _Segments:
    """The digits of a batch as flat segment ids, with each digit's alive-cell count (fixed over steps)."""

    def __init__(self, truth: torch.Tensor, segments: torch.Tensor):
        self.alive = truth >= 0
        if ((segments >= 0) != self.alive).any():
            raise ValueError("segments and truth disagree on which cells are alive")
        per = int(segments.max().item()) + 1 if self.alive.any() else 1
        self.n = truth.shape[0] * per
        ids = segments + per * torch.arange(truth.shape[0], device=truth.device).view(-1, 1, 1)
        self.ids, self.truth = ids[self.alive], truth[self.alive]
        self.size = torch.bincount(self.ids, minlength=self.n)
        self.present = self.size > 0


def count(logits: torch.Tensor, truth: torch.Tensor, segments: torch.Tensor | None = None) -> dict:
    """Exact integer counts of one batch: alive cells, right cells, digits, digits in total agreement
    (all alive cells right), unanimous digits (all the same label) and the sum of per-digit accuracies.

    Args:
        logits: (B, 10, H, W) label scores.
        truth: (B, H, W) right labels, −1 on dead cells.
        segments: (B, H, W) digit index per alive cell, −1 on dead cells (default: one digit per image).

    Example:
        >>> truth = torch.tensor([[[1, 1, -1]]])
        >>> logits = F.one_hot(torch.tensor([[[1, 2, 0]]]), 10).permute(0, 3, 1, 2).float()
        >>> count(logits, truth)["correct"], count(logits, truth)["agree"]
        (1, 0)
    """
    seg = _Segments(truth, (truth >= 0).long() - 1 if segments is None else segments)
    c = _count_tensors(logits.argmax(1), seg)
    return {k: (v.item() if k != "digit_accuracy_sum" else float(v)) for k, v in c.items()}


def _count_tensors(pred: torch.Tensor, seg: _Segments) -> dict:
    p = pred[seg.alive]
    right = p == seg.truth
    n_right = torch.bincount(seg.ids[right], minlength=seg.n)
    votes = torch.bincount(seg.ids * CLASSES + p.clamp(0, CLASSES - 1), minlength=seg.n * CLASSES)
    top = votes.view(seg.n, CLASSES).max(1).values
    return {"cells": seg.size.sum(), "correct": right.sum(), "digits": seg.present.sum(),
            "agree": ((n_right == seg.size) & seg.present).sum(),
            "unanimous": ((top == seg.size) & seg.present).sum(),
            "digit_accuracy_sum": (n_right[seg.present].double() / seg.size[seg.present]).sum()}


def summarise(c: dict) -> dict:
    """Shares from counts: accuracy (cells), agreement and unanimity (digits), digit_accuracy (mean)."""
    cells, digits = max(int(c["cells"]), 1), max(int(c["digits"]), 1)
    return {"accuracy": int(c["correct"]) / cells, "agreement": int(c["agree"]) / digits,
            "unanimity": int(c["unanimous"]) / digits, "digit_accuracy": float(c["digit_accuracy_sum"]) / digits}


# --- streaming evaluation -------------------------------------------------------------------------------

def _rel_residual(g, z) -> torch.Tensor:
    gz = g(z)
    dims = tuple(range(1, z.dim()))
    return torch.linalg.vector_norm(gz - z, dim=dims) / (torch.linalg.vector_norm(gz, dim=dims) + 1e-8)


@torch.no_grad()
def rollout_counts(model: CellsModel, x, truth, segments=None, steps: int = 200, marks=MARKS, generator=None,
                   z0=None):
    """Roll one batch out once: counts after every step 1..`steps` (tensors of length `steps`), the
    relative residual of the deterministic map at each mark ≤ steps ({mark: (B,)}), and the last state."""
    rule = model.rule
    seg = _Segments(truth, (truth >= 0).long() - 1 if segments is None else segments)
    f, g = rule.step_map(x, generator), rule.expected_map(x)
    z = rule.initial_state(x) if z0 is None else z0
    curves = {k: torch.zeros(steps, dtype=torch.float64 if k == "digit_accuracy_sum" else torch.long,
                             device=x.device) for k in ("correct", "agree", "unanimous", "digit_accuracy_sum")}
    residual = {}
    for t in range(steps):
        z = f(z)
        c = _count_tensors(rule.logits(z).argmax(1), seg)
        for k in curves:
            curves[k][t] = c[k]
        if t + 1 in marks:
            residual[t + 1] = _rel_residual(g, z)
    totals = {"cells": int(seg.size.sum()), "digits": int(seg.present.sum())}
    return curves, residual, totals, z


class _Accumulator:
    """Sums the counts of batches; `report()` gives the shares per step and at the marks."""

    def __init__(self, steps: int, marks):
        self.steps, self.marks = steps, sorted(m for m in marks if m <= steps)
        self.curves, self.cells, self.digits, self.residual = None, 0, 0, {m: [] for m in self.marks}

    def add(self, curves, residual, totals):
        curves = {k: v.cpu() for k, v in curves.items()}
        self.curves = curves if self.curves is None else {k: self.curves[k] + v for k, v in curves.items()}
        self.cells, self.digits = self.cells + totals["cells"], self.digits + totals["digits"]
        for m in self.marks:
            self.residual[m].append(residual[m].float().cpu())

    def report(self) -> dict:
        cells, digits = max(self.cells, 1), max(self.digits, 1)
        curve = {"accuracy": (self.curves["correct"].double() / cells).tolist(),
                 "agreement": (self.curves["agree"].double() / digits).tolist(),
                 "unanimity": (self.curves["unanimous"].double() / digits).tolist(),
                 "digit_accuracy": (self.curves["digit_accuracy_sum"] / digits).tolist()}
        at = {}
        for m in self.marks:
            at[m] = {k: v[m - 1] for k, v in curve.items()}
            res = torch.cat(self.residual[m])
            finite = torch.isfinite(res)          # a state that overflowed (the article's rule can) is counted
            at[m]["rel_residual"] = res[finite].mean().item() if finite.any() else float("nan")
            at[m]["nonfinite"] = int((~finite).sum())
        top = {}
        for k in ("accuracy", "agreement"):
            best = max(range(self.steps), key=lambda t: (curve[k][t], -t))
            top[k] = {"value": curve[k][best], "step": best + 1}
        return {"steps": self.steps, "cells": self.cells, "digits": self.digits, "at": at, "top": top, "curve": curve}


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def evaluate(model: CellsModel, x, truth, segments=None, marks=MARKS, steps: int | None = None,
             batch_size: int = 256, seed: int = 0, device=None) -> dict:
    """The metrics after every step up to `steps` (default: the last mark), over batches of the set.

    Args:
        model: a `CellsModel`.
        x: (N, 1, H, W) grey inputs (single digits or canvases).
        truth: (N, H, W) right labels, −1 on dead cells (`truth_map`, `canvas_batch`).
        segments: (N, H, W) digit index per alive cell (canvases); default one digit per image.
        marks: the steps reported in the table ("at"), each with the relative residual there.
        steps: how far to roll out (default max(marks)); the curve has one entry per step.
        batch_size: images per rollout (memory: one batch's state).
        seed: seeds the stochastic steps (batch b draws from seed·1,000,003 + b).

    Returns:
        {"steps", "cells", "digits", "at": {mark: {accuracy, agreement, unanimity, digit_accuracy,
        rel_residual (the mean over the digits whose state is finite), nonfinite (how many are not)}},
        "top": {accuracy|agreement: {value, step}}, "curve": {metric: [per step]}}.

    Example:
        >>> x = torch.rand(4, 1, 14, 14)
        >>> r = evaluate(CellsModel({"rule": "selfclass"}), x, truth_map(x, torch.arange(4)), marks=(2,))
        >>> sorted(r["at"][2])
        ['accuracy', 'agreement', 'digit_accuracy', 'nonfinite', 'rel_residual', 'unanimity']
    """
    device = device or next(model.parameters()).device
    steps = steps or max(marks)
    acc = _Accumulator(steps, marks)
    for b, sl in enumerate(_batches(len(x), batch_size)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        xb, tb = x[sl].to(device), truth[sl].to(device)
        sb = None if segments is None else segments[sl].to(device)
        curves, residual, totals, _ = rollout_counts(model, xb, tb, sb, steps, acc.marks, gen)
        acc.add(curves, residual, totals)
    return acc.report()


@torch.no_grad()
def mutation_test(model: CellsModel, x, labels, new_x, new_labels, at: int = MUTATE_AT, after: int = MUTATE_AT,
                  marks=None, batch_size: int = 256, seed: int = 0, threshold: float = ALIVE_THRESHOLD,
                  device=None) -> dict:
    """The article's mutation: `at` steps on x, then each digit is replaced by new_x (the state kept where
    the new digit is alive, zero elsewhere) and `after` more steps run, scored against `new_labels`.

    Returns {"before": evaluate-style report of the first `at` steps, "after": the same for the steps
    after the mutation (step 1 = the first step on the new digit)}.

    Example:
        >>> x = torch.rand(2, 1, 14, 14)
        >>> r = mutation_test(CellsModel({"rule": "selfclass"}), x, torch.tensor([1, 2]), x.flip(0),
        ...                   torch.tensor([2, 1]), at=2, after=2)
        >>> sorted(r)
        ['after', 'before']
    """
    device = device or next(model.parameters()).device
    marks_before = marks or (at,)
    marks_after = marks or (after,)
    before, later = _Accumulator(at, marks_before), _Accumulator(after, marks_after)
    for b, sl in enumerate(_batches(len(x), batch_size)):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        xb, nb = x[sl].to(device), new_x[sl].to(device)
        tb, ntb = truth_map(xb, labels[sl].to(device), threshold), truth_map(nb, new_labels[sl].to(device), threshold)
        curves, residual, totals, z = rollout_counts(model, xb, tb, None, at, before.marks, gen)
        before.add(curves, residual, totals)
        z = z * alive_mask(nb, threshold).unsqueeze(1)
        curves, residual, totals, _ = rollout_counts(model, nb, ntb, None, after, later.marks, gen, z0=z)
        later.add(curves, residual, totals)
    return {"before": before.report(), "after": later.report()}


def solve_equilibrium(rule, x, solve, strategy=None, max_iter: int = 60, tol: float = 1e-4):
    """(state, SolveStats): the fixed point of a deterministic rule on input x, by the rule's own
    `equilibrium` where it has one (the consensus rule solves by blocks), else by `solve` on its map from
    its initial state; differentiable through `strategy` (a gradient strategy, gradients.py) when given."""
    if callable(getattr(rule, "equilibrium", None)):
        return rule.equilibrium(x, solve, strategy, max_iter=max_iter, tol=tol)
    f, z0 = rule.expected_map(x), rule.initial_state(x)
    if strategy is None:
        return solve(f, z0, max_iter=max_iter, tol=tol)
    return strategy(f, solve, z0, max_iter=max_iter, tol=tol)


@torch.no_grad()
def evaluate_solved(model: CellsModel, x, truth, segments=None, solver: str = "anderson", max_iter: int = 200,
                    tol: float = 1e-5, batch_size: int = 256, device=None) -> dict:
    """The metrics at the fixed point a solver reaches (a deterministic rule: the equilibrium model).

    Returns {"accuracy", "agreement", "unanimity", "digit_accuracy", "rel_residual" (mean), "nstep" (mean)}.
    """
    from deqnca.core.solvers import get_solver

    device = device or next(model.parameters()).device
    solve = get_solver(solver)
    totals, res, steps = {}, [], []
    for sl in _batches(len(x), batch_size):
        xb, tb = x[sl].to(device), truth[sl].to(device)
        sb = None if segments is None else segments[sl].to(device)
        z, stats = solve_equilibrium(model.rule, xb, solve, max_iter=max_iter, tol=tol)
        c = count(model.rule.logits(z), tb, sb)
        totals = {k: totals.get(k, 0) + v for k, v in c.items()}
        res.append(stats.rel_residual.float().cpu())
        steps.append(stats.nstep)
    return {**summarise(totals), "rel_residual": torch.cat(res).mean().item(), "nstep": sum(steps) / len(steps)}
