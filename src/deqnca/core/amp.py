"""Mixed precision: which parts of a forward pass run in bfloat16 (docs/speed.md)."""
from __future__ import annotations

import torch

AMP_MODES = ("off", "bf16")


def amp_context(amp: str, device):
    """The forward pass's precision. "bf16": torch.autocast runs convolutions and linear layers in
    bfloat16 while the state, its additions and the loss stay float32 (a rollout then does not
    accumulate bfloat16 rounding); "off": float32.

    Examples:
        >>> with amp_context("off", "cpu"):
        ...     pass
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}: choose one of {', '.join(AMP_MODES)} (\"auto\" is resolved per machine "
                         "by the trainer)")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")
