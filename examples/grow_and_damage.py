"""Grow and damage a lizard.

The shipped growing NCA (trained as an equilibrium by the windowed phantom gradient) grows a lizard
from one seed cell with its stochastic rule; then a disc is cut out of it and it grows back. Prints the
L2 distance to the target picture along the way and writes the frames and GIFs to --out.

    python examples/grow_and_damage.py               # 96 steps of growth, 96 of regrowth
    python examples/grow_and_damage.py --quick       # 48 and 48 (seconds)
    python examples/grow_and_damage.py --model grow/lizard-bptt
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import deqnca
from deqnca.tasks.grow.replay import pattern_box, replay, rgb_on_white, write_gif
from deqnca.tasks.grow.rule import target_loss
from deqnca.viz.figures import image_grid, relative_residuals, step_caption

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="grow/lizard-equilibrium", help="a shipped name or a checkpoint path")
parser.add_argument("--quick", action="store_true", help="48 steps of growth and of regrowth")
parser.add_argument("--out", default="out/examples/lizard")
args = parser.parse_args()
steps = 48 if args.quick else 96
out = Path(args.out)

model, meta = deqnca.load(args.model, kind="grow")
rule, target = model.rule, model.target
H, W = target.shape[1:]
z0 = model.initial_state(model.canvas(1))                       # one live cell in the centre
grown, growth = replay(rule, z0, steps, seed=0, keep_frames=True)
print(f"{args.model}: L2 to the target {target_loss(grown, target[None]).item():.4f} after {steps} steps")

rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
cut = ((rows - 42) ** 2 + (cols - 38) ** 2 > 9 ** 2).float()          # erase a disc of radius 9 cells
damaged = grown * cut
print(f"  a disc erased: L2 {target_loss(damaged, target[None]).item():.4f}")
regrown, regrowth = replay(rule, damaged, steps, seed=2, keep_frames=True)
print(f"  {steps} steps later: L2 {target_loss(regrown, target[None]).item():.4f}")

box = (slice(None), *pattern_box(target, growth[:, 0]))              # crop every picture to the lizard
frames = np.concatenate([rgb_on_white(growth[:, 0]), rgb_on_white(regrowth[:, 0])])[box]
rel = relative_residuals(growth[:, 0]) + relative_residuals(regrowth[:, 0])
captions = [step_caption(t, r) for t, r in enumerate(rel[:steps + 1])] + [
    "damaged" if t == 0 else f"regrowing {step_caption(t, r)}" for t, r in enumerate(rel[steps + 1:])]
files = [write_gif(frames, out / "grow-and-damage.gif", scale=6, captions=captions),
         image_grid([rgb_on_white(z)[box][0] for z in (growth[steps // 4], grown, damaged, regrown, target[None])],
                    out / "grow-and-damage.png", titles=[f"step {steps // 4}", f"step {steps}", "damaged",
                                                         "regrown", "target"], ncols=5, scale=1.8)]
print("wrote", ", ".join(str(f) for f in files))
