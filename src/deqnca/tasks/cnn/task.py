"""The small-CNN baseline of the crop comparison, as a task: the smallest complete example of one.

Train it with ``deqnca`` from Python (`train_cnn`) or as any task through `deqnca.fit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from deqnca.core.configs import option
from deqnca.engine.trainer import TASKS, Batch, Task, TrainConfig, epoch_order
from deqnca.tasks.cnn.model import SmallCNN


@dataclass
class CnnConfig(TrainConfig):
    """Options of the CNN baseline (Adam 1e-3, 3 epochs)."""
    epochs: int = option(3, "passes over the training set")
    optimizer: str = option("adam", "optimiser", choices=("sgd", "adam", "adamw"))
    lr: float = option(1e-3, "learning rate")


@TASKS.register("cnn")
class CnnTask(Task):
    """Classify 28x28 images with `SmallCNN`; `data` = (x, y) training images and labels."""

    name = "cnn"
    Config = CnnConfig

    def __init__(self, cfg: CnnConfig, data):
        super().__init__(cfg)
        self.x, self.y = data

    def build_model(self):
        return SmallCNN()

    def steps_per_epoch(self):
        return math.ceil(len(self.x) / self.cfg.batch_size)

    def start_epoch(self, epoch):
        self.perm = epoch_order(len(self.x), self.cfg.seed, epoch)

    def batch(self, epoch, index, global_step):
        rows = self.perm[index * self.cfg.batch_size:(index + 1) * self.cfg.batch_size]
        idx = rows[self.rank::self.world]
        return Batch((self.x[idx].to(self.device), self.y[idx].to(self.device)), len(idx), len(rows), index)

    def loss(self, batch):
        x, y = batch.data
        loss = F.cross_entropy(self.model(x), y)
        return loss, loss

    def after_step(self, batch, out, ok, step):
        if ok:
            self.meter.add("loss", out.item() * batch.local, batch.local)

    def end_epoch(self, epoch, global_step, elapsed):
        rec = {"epoch": epoch, "train_loss": self.meter.mean("loss"), "elapsed_s": elapsed}
        self.log(f"cnn epoch {epoch:g}: loss {rec['train_loss']:.4f}")
        return rec


def train_cnn(x, y, out, epochs: int = 3, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log=print, **fit_kw):
    """Train the baseline CNN on (x, y) through the engine; returns the trained model.

    Examples:
        >>> model = train_cnn(x, y, "runs/cnn", epochs=1)  # doctest: +SKIP
    """
    from deqnca.engine.trainer import fit

    cfg = CnnConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return fit(CnnTask(cfg, (x, y)), out, log=log, **fit_kw)["model"]
