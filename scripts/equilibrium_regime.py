"""Is the contractive rule's fixed point in tanh's nonlinear regime? (why the equilibrium model starts slowly)

    python scripts/equilibrium_regime.py [--checkpoint mnist-equilibrium] [--images 200]

Prints, at initialisation and for a checkpoint: the raw operator norm σ of K2's state part, the mean
|pre-activation| of tanh at the fixed point, the share of cells with |pre-activation| > 0.5, and the
spread across images of the pooled fixed point (the signal the read-out MLP sees).
"""
from __future__ import annotations

import argparse

import torch

from deqnca import load
from deqnca.core.conditioning import Injection
from deqnca.data.idx import load_mnist
from deqnca.tasks.mnist.config import preset
from deqnca.tasks.mnist.model import EquilibriumModel


@torch.no_grad()
def regime(model, x):
    model.eval()
    z, _ = model.solve(x)
    u = model.encode(x)
    rule = model.rule
    w = torch.cat([rule.K2.weight[:, :rule.input_channels], rule.state_weight()], 1)
    pre = Injection().bind(w, rule.K2.bias, u)(z)
    return {"sigma_raw": rule.sigma.item(), "mean_abs_pre": pre.abs().mean().item(),
            "frac_abs_pre_gt_0.5": (pre.abs() > 0.5).float().mean().item(),
            "pooled_std_across_images": z.mean((2, 3)).std(0).mean().item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="mnist-equilibrium")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-scales", default="1", help="comma-separated rule_kw.input_init_scale values at init")
    args = ap.parse_args()
    x, _ = load_mnist(split="test")
    x = x[:args.images]
    rows = []
    for scale in (float(v) for v in args.input_scales.split(",")):
        torch.manual_seed(args.seed)
        cfg = preset("equilibrium", {"rule_kw": {"input_init_scale": scale}}).model
        rows.append((f"initialisation, input_init_scale {scale:g}", EquilibriumModel(cfg)))
    rows.append((args.checkpoint, load(args.checkpoint)[0]))
    print("| model | raw σ(K2_z) | mean abs tanh pre-activation | share abs > 0.5 | pooled z* std across images |")
    print("|---|---|---|---|---|")
    for name, m in rows:
        r = regime(m, x)
        print(f"| {name} | {r['sigma_raw']:.3f} | {r['mean_abs_pre']:.3f} | {100 * r['frac_abs_pre_gt_0.5']:.1f}% | "
              f"{r['pooled_std_across_images']:.4f} |")


if __name__ == "__main__":
    main()
