"""Why CI's tiny training test is 4-class: small global-average-pooled CNNs start on a long plateau.

    python scripts/global_pool_plateau.py     # ~1 min on 2 CPU cores

Trains plain CNNs (conv 1→16 ReLU, then 1 or 3 conv 16/32→32 tanh layers, global average pool,
MLP 32→32→10) with Adam 3e-3, batch 32, on the first 3,000 MNIST training images for 3 epochs and
prints test accuracy on the first 500 test images after each epoch.
"""
import torch
import torch.nn.functional as F
from torch import nn

from deqnca.data.idx import load_mnist


def main():
    torch.manual_seed(0)
    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    x, y, xt, yt = x[:3000], y[:3000], xt[:500], yt[:500]
    for depth in (2, 4):
        layers, c = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()], 16
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, 32, 3, padding=1), nn.Tanh()]
            c = 32
        net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.ReLU(),
                            nn.Linear(32, 10))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for epoch in range(3):
            perm = torch.randperm(len(x))
            for b in range(0, len(x), 32):
                i = perm[b:b + 32]
                loss = F.cross_entropy(net(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                acc = (net(xt).argmax(1) == yt).float().mean().item()
            print(f"conv layers {depth}, epoch {epoch + 1}: test accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
