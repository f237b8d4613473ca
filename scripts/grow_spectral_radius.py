"""Spectral radius of ∂f/∂z (expected map) for the shipped lizards, after 96 stochastic growth steps from
one seed cell (2 replays, generator seed 0). docs/grow.md, "Stability tools on the small target".

    PYTHONPATH=src python scripts/grow_spectral_radius.py
"""
import torch

from deqnca import load
from deqnca.core.solvers import rollout
from deqnca.tasks.grow.model import spectral_radius

torch.manual_seed(0)    # the power iteration's start vector
for name in ("bptt", "equilibrium"):
    rule = load(f"grow/lizard-{name}")[0].rule
    with torch.no_grad():
        z, _ = rollout(rule.stochastic_map(torch.Generator().manual_seed(0)), rule.seed(2, 72, 72), max_iter=96,
                       measure=False)
    print(name, [round(r, 4) for r in spectral_radius(rule.expected_map(), z, iters=40).tolist()])
