"""Which device a run uses and how many CPU threads."""
from __future__ import annotations

import os


def pick_device(arg: str = "auto") -> str:
    """"auto" -> "cuda" when available, else "cpu"; a CUDA device on a machine without one is an error."""
    import torch

    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if arg.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {arg}: CUDA is not available on this machine; use --device cpu")
    if arg != "cpu" and not arg.startswith("cuda"):
        raise ValueError(f"--device {arg!r}: use cpu, cuda, cuda:N or auto")
    return arg


def set_threads(device: str) -> None:
    """All cores for CPU work unless OMP_NUM_THREADS says otherwise; cuDNN autotuning on a GPU."""
    import torch

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
