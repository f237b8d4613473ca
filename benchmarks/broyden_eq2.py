"""What TorchDeq's Broyden does on the essay's eq. (2), z = z + tanh(K2 * [u, z]), from noise.

    python benchmarks/broyden_eq2.py [--checkpoint mnist-essay] [--images 16] [--masking-fix]

For each setting it prints the state norm ‖z‖ (the noise start has ‖z0‖ ≈ 158), the absolute
residual ‖f(z) − z‖ and the relative residual ‖f(z) − z‖/‖f(z)‖ of the iterate TorchDeq returns,
and how many samples are non-finite. On a residual rule with a bounded update |tanh| ≤ 1, a state
that blows up has a *small relative residual* (‖f(z) − z‖ ≤ √D while ‖f(z)‖ grows), so Broyden in
'rel' mode is rewarded for diverging; in 'abs' mode it returns its lowest-residual iterate, which
stays close to the noise it started from. `--masking-fix` applies deqnca's fix of TorchDeq's
best-iterate selection (`deqnca.core.solvers.patch_torchdeq_masking`), which separates the library bug
(NaN leaking into the kept iterate) from the divergence itself.
"""
from __future__ import annotations

import argparse

import torch
from torchdeq.solver import broyden_solver

from deqnca.core.solvers import residuals
from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.model import EquilibriumModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a trained model (default: fresh models at two initialisations)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--masking-fix", action="store_true", help="patch TorchDeq's NaN-leaking iterate selection")
    args = ap.parse_args()
    if args.masking_fix:
        from deqnca.core.solvers import patch_torchdeq_masking
        patch_torchdeq_masking()
    torch.manual_seed(args.seed)
    x, _ = load_mnist(split="test")
    x = x[:args.images]
    models = []
    if args.checkpoint:
        from deqnca import load
        models.append((args.checkpoint, load(args.checkpoint)[0]))
    else:
        for scale in (1.0, 0.1):
            m = EquilibriumModel(preset("essay-broyden", {"rule_kw": {"state_init_scale": scale}}).model)
            models.append((f"init, K2 state part x{scale}", m))
    print("| model | max_iter | stop | median ‖z‖ | max finite ‖z‖ | median abs res | median rel res | non-finite |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in models:
        m.eval()
        with torch.no_grad():
            f = m.step_map(x)
            z0 = m.initial_state(x, torch.Generator().manual_seed(args.seed))
            a0, r0 = residuals(f(z0), z0)
            n0 = z0.flatten(1).norm(dim=1)
            print(f"| {name} | 0 (noise) | - | {n0.median():.3g} | {n0.max():.3g} | {a0.median():.3g} | "
                  f"{r0.median():.3g} | 0 |")
            for it in (4, 16, 40):
                for mode in ("abs", "rel"):
                    z, _, _ = broyden_solver(f, z0, max_iter=it, tol=1e-3, stop_mode=mode)
                    a, r = residuals(f(z), z)
                    n = z.flatten(1).norm(dim=1)
                    bad = ~torch.isfinite(n)
                    med = lambda t, bad=bad: t[~bad].median().item() if (~bad).any() else float("nan")
                    top = n[~bad].max().item() if (~bad).any() else float("nan")
                    print(f"| {name} | {it} | {mode} | {med(n):.3g} | {top:.3g} | {med(a):.3g} | {med(r):.3g} | "
                          f"{int(bad.sum())}/{len(n)} |")


if __name__ == "__main__":
    main()
