"""Train your own rule on your own data in ~40 lines.

A rule is a small nn.Module with `bind`; registered under a name, it plugs into the same model, solver,
implicit gradient and training engine as the built-in ones. The data here is made up on the spot: 12×12
images holding one noisy bar, and the question "horizontal or vertical?".

    python examples/train_your_own_rule.py            # 3 epochs of 3,000 images
    python examples/train_your_own_rule.py --quick    # 1 epoch of 1,000 (seconds)
"""
import argparse

import torch
from torch import nn

import deqnca


@deqnca.register_rule("leaky_tanh")
class LeakyTanhRule(nn.Module):
    """z' = (1 − leak)·z + leak·tanh(W_u * u + W_z * z + b), with W_z scaled so that the map contracts."""

    def __init__(self, input_channels=4, state_channels=8, leak=0.5):
        super().__init__()
        self.conv = nn.Conv2d(input_channels + state_channels, state_channels, 3, padding=1)
        self.input_channels, self.leak = input_channels, leak

    def bind(self, u, conditioning):
        w_u, w_z = self.conv.weight.split([self.input_channels, self.conv.out_channels], dim=1)
        w_z = w_z * (0.5 / (3 * w_z.norm())).clamp(max=1)     # ‖W_z *‖ ≤ 3‖W_z‖_F ≤ 0.5: one fixed point
        update = conditioning.bind(torch.cat([w_u, w_z], 1), self.conv.bias, u, activation=torch.tanh)
        return lambda z: (1 - self.leak) * z + self.leak * update(z)


def bars(n, size=12, seed=0):
    """Your own data: (x (n, 1, size, size), y (n,)), y = 0 for a horizontal bar, 1 for a vertical one."""
    g = torch.Generator().manual_seed(seed)
    y, pos = torch.randint(0, 2, (n,), generator=g), torch.randint(2, size - 2, (n,), generator=g)
    x = 0.2 * torch.rand(n, 1, size, size, generator=g)
    for i in range(n):
        (x[i, 0, pos[i], :] if y[i] == 0 else x[i, 0, :, pos[i]]).fill_(1.0)
    return x, y


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", default="out/examples/own-rule")
args = parser.parse_args()
n, epochs = (1000, 1) if args.quick else (3000, 3)
(x, y), (xt, yt) = bars(n), bars(500, seed=1)

model_config = {"rule": "leaky_tanh", "rule_kw": {"leak": 0.5}, "input_channels": 4, "state_channels": 8,
                "hidden": 16, "classes": 2, "solver": "fixed_point", "solver_kw": {"max_iter": 40, "tol": 1e-3},
                "gradient": "implicit", "gradient_kw": {"b_solver": "fixed_point", "b_max_iter": 40, "b_tol": 1e-3}}
config = deqnca.MnistConfig(epochs=epochs, batch_size=25, optimizer="adam", lr=1e-2, model=model_config)
run = deqnca.fit(deqnca.MnistTask(config, (x, y, xt, yt)), args.out, overwrite=True, progress=False,
                 log=lambda line: None)
last = run["history"][-1]
print(f"{run['parameters']:,} parameters; after {epochs} epoch(s): test accuracy {100 * last['test_acc']:.1f}%, "
      f"median relative residual {last['test_rel_median']:.1e} in {last['test_nstep']:.0f} solver steps")
model, _ = deqnca.load(f"{args.out}/last")                   # the checkpoint names its rule: registered above
print("reloaded from", f"{args.out}/last:", f"{100 * deqnca.evaluate(model, xt, yt)['accuracy']:.1f}%")
