"""Where the shipped models and the vendored MNIST files are (a clone of the repository)."""
from __future__ import annotations

from pathlib import Path


def repo_root() -> Path | None:
    """The repository folder holding `models/` and `datasets/`, or None outside a clone."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "models").is_dir() and (parent / "datasets").is_dir():
            return parent
    return None


def models_dir() -> Path:
    """The folder of the shipped models; a one-line error outside a clone of the repository."""
    root = repo_root()
    if root is None:
        raise FileNotFoundError("shipped models not found (run from a clone of the repository, or pass a path)")
    return root / "models"


def shipped_model(name: str) -> Path:
    """The shipped MNIST model `name` ("essay" or "equilibrium"), as a checkpoint path."""
    return models_dir() / f"mnist-{name}"


MAIN_MODELS = ("mnist-essay", "mnist-equilibrium")     # what `deqnca eval` and the main job evaluate


def shipped_models() -> list[Path]:
    """The shipped MNIST classifiers of the main job: the essay's model, then the equilibrium model."""
    return [models_dir() / name for name in MAIN_MODELS]
