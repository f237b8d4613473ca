"""The engine's running metrics: a task adds each step's values, the engine keeps the sums, checkpoints them,
restores them on resume and clears them at the start of each epoch; the task reads the means for its
records, the progress bar shows them.

A number joins a running sum in the order the steps come, so a resumed run sums exactly what an
uninterrupted one sums. A tensor (a loss still on the GPU) is kept as it is, with no host sync per step,
and reduced only when read.
"""
from __future__ import annotations

import math

import torch


class Meter:
    """Running sums of per-step values, by name.

    ``add(name, total, count)`` adds `total`, the sum of `count` values (a batch's summed loss and its
    sample count; a per-step value and 1); ``mean(name)`` is the sum over the count. A tensor `total` is a
    single value, kept unsummed on its device; its mean is ``torch.stack(values).mean()``.

    Examples:
        >>> m = Meter()
        >>> m.add("loss", 3.0, 2); m.add("loss", 1.0, 2)
        >>> m.mean("loss")
        1.0
        >>> m.reset(); m.mean("loss")
        nan
    """

    def __init__(self):
        self.sums: dict = {}
        self.counts: dict = {}
        self.series: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, total, count: int = 1) -> None:
        """Add `total`, the sum of `count` values of `name` (a tensor: one value, kept on its device)."""
        if torch.is_tensor(total):
            self.series.setdefault(name, []).append(total.detach())
            return
        self.sums[name] = self.sums.get(name, 0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def mean(self, name: str, empty: float = math.nan) -> float:
        """The running mean of `name`; `empty` when nothing was added since the last reset."""
        if name in self.series:
            values = self.series[name]
            return torch.stack(values).mean().item() if values else empty
        count = self.counts.get(name, 0)
        return self.sums[name] / count if count else empty

    def means(self) -> dict:
        """Every running mean, by name (what the progress bar shows)."""
        return {name: self.mean(name) for name in (*self.sums, *self.series)}

    def reset(self) -> None:
        """Forget everything added (the engine calls it at the start of each epoch; a task may call it after
        each record, for means over the steps since the last one)."""
        self.sums, self.counts, self.series = {}, {}, {}

    def state(self) -> dict:
        """The sums as JSON for a checkpoint (a kept tensor as its float value)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts),
                "series": {k: [float(v) for v in values] for k, values in self.series.items()}}

    def load_state(self, state: dict, device="cpu") -> None:
        """Restore what `state` returned (kept tensors as float32 on `device`)."""
        self.sums, self.counts = dict(state.get("sums", {})), dict(state.get("counts", {}))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in (*self.sums.values(), *self.counts.values())):
            raise ValueError("a running sum or count that is not a number")
        self.series = {k: [torch.tensor(v, device=device) for v in values]
                       for k, values in state.get("series", {}).items()}
