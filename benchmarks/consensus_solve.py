"""The consensus model's training step solved jointly against by blocks, in one run.

    PYTHONPATH=src python benchmarks/consensus_solve.py                     # the shipped cells/consensus
    PYTHONPATH=src python benchmarks/consensus_solve.py runs/cells-consensus-seed0/last --repeats 3

One training step each way on the same batch of `--batch` training digits (28×28), one thread: the loss
(per-cell cross-entropy), its backward pass, no optimiser step.
- joint: the registered solver iterates the whole map (z, y) from the rule's initial state and the implicit
  (IFT) gradient solves the adjoint of the whole map (what `cells train --model consensus` did before
  `ConsensusCellsRule.equilibrium`): the flood's evidence drains by ε per step while z settles;
- blocks: `ConsensusCellsRule.equilibrium`: z alone by the solver and the IFT, then one exact flood whose
  gradient is a gather.
Prints seconds per step, solver steps and how far the two gradients are apart (they are the gradient of
the same fixed point; the joint one stops at the solver's tolerance).
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default="cells/consensus")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--solver-iter", type=int, default=120)
    ap.add_argument("--b-max-iter", type=int, default=80)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from deqnca import load
    from deqnca.core.gradients import make_gradient
    from deqnca.core.resources import resolve_checkpoint
    from deqnca.core.solvers import get_solver
    from deqnca.tasks.cells.model import LOSSES, truth_map
    from deqnca.tasks.cells.task import load_digits

    model, _ = load(resolve_checkpoint(a.checkpoint))
    model.train()
    rule = model.rule
    x, y, _, _ = load_digits(28, 2000, 1)
    pick = torch.randint(len(x), (a.batch,), generator=torch.Generator().manual_seed(1))
    xb, truth = x[pick], truth_map(x[pick], y[pick])
    solve = get_solver("fixed_point")

    def joint():
        strategy = make_gradient("implicit", b_max_iter=a.b_max_iter, b_tol=1e-4)
        z, stats = strategy(rule.step_map(xb), solve, rule.initial_state(xb), max_iter=a.solver_iter, tol=1e-4)
        return z, stats.nstep

    def blocks():
        strategy = make_gradient("implicit", b_max_iter=a.b_max_iter, b_tol=1e-4)
        z, stats = rule.equilibrium(xb, solve, strategy, max_iter=a.solver_iter, tol=1e-4)
        return z, stats.nstep

    grads, seconds = {}, {"joint": [], "blocks": []}
    for _ in range(a.repeats):
        for name, step in (("joint", joint), ("blocks", blocks)):
            model.zero_grad()
            t = time.perf_counter()
            z, nstep = step()
            LOSSES["ce"](rule.logits(z), truth).mean().backward()
            seconds[name].append(time.perf_counter() - t)
            grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            print(f"{name:6s} {seconds[name][-1]:.2f} s  forward steps {nstep}", flush=True)
    gap = ((grads["blocks"] - grads["joint"]).norm() / grads["joint"].norm()).item()
    cos = torch.nn.functional.cosine_similarity(grads["blocks"], grads["joint"], 0).item()
    best = {k: min(v) for k, v in seconds.items()}
    print(f"joint {best['joint']:.2f} s, blocks {best['blocks']:.2f} s per step (best of {a.repeats}): "
          f"{best['joint'] / best['blocks']:.1f}x; gradients: relative gap {gap:.1e}, cosine {cos:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
