"""Where the shipped models, the vendored MNIST files and the growing-NCA targets are.

They are package data under `deqnca/_data/` (`models/`, `mnist/`, `targets/`), found with
`importlib.resources`, so a clone and an installed wheel find them the same way, from any directory and
without the network. This module is the one place that knows where they are. Overrides:
``$DEQNCA_MODELS`` (a folder laid out as `_data/models`) and ``$DEQNCA_DATA`` (MNIST-layout IDX files,
read by `deqnca.data.idx`); on the command line `--models-dir` and `--data-dir`.

A shipped model can be named instead of given as a path: ``mnist-essay``, ``grow/lizard-equilibrium``,
``maze/dt`` (or with the ``models/`` prefix that earlier docs used); a path that exists
always wins. `shipped_names()` lists them.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

MAIN_MODELS = ("mnist-essay", "mnist-equilibrium")     # what `deqnca eval` and the main job evaluate
CELLS_MODELS = ("article", "consensus")                 # the self-classifying digits of the main job, under cells/
_LEGACY_PREFIX = "models/"


def data_root() -> Path:
    """The package-data folder `deqnca/_data` (a real folder: deqnca is never imported from a zip)."""
    root = importlib.resources.files("deqnca") / "_data"
    if not isinstance(root, Path):
        raise FileNotFoundError(f"deqnca's data is not on the file system ({root}); install deqnca unzipped")
    return root


def models_dir(override=None) -> Path:
    """The folder of the shipped models: `override`, else ``$DEQNCA_MODELS``, else the installed ones."""
    if override:
        return Path(override)
    env = os.environ.get("DEQNCA_MODELS")
    return Path(env) if env else data_root() / "models"


def mnist_dir() -> Path:
    """The vendored MNIST files (the four official gzipped IDX files)."""
    return data_root() / "mnist"


def targets_dir() -> Path:
    """The growing-NCA target images (`lizard.png`, `small.png`)."""
    return data_root() / "targets"


def repo_root() -> Path | None:
    """The source checkout deqnca runs from (the folder with `pyproject.toml` and `docs/`), or None when
    deqnca is installed from a wheel."""
    here = Path(__file__).resolve().parents[1]          # .../src/deqnca in a checkout
    root = here.parent.parent
    if here.parent.name == "src" and (root / "pyproject.toml").is_file() and (root / "docs").is_dir():
        return root
    return None


def shipped_model(name: str, root=None) -> Path:
    """The shipped MNIST model `name` ("essay" or "equilibrium"), as a checkpoint path."""
    return models_dir(root) / f"mnist-{name}"


def shipped_models(root=None) -> list[Path]:
    """The shipped MNIST classifiers of the main job: the essay's model, then the equilibrium model."""
    return [models_dir(root) / name for name in MAIN_MODELS]


def shipped_cells_models(root=None) -> dict[str, Path]:
    """The main job's shipped self-classifying models that exist, by name: {"article": .../cells/article,
    "consensus": ...}, without those missing ({} for a models folder that has none). cells/equilibrium (the
    plain contraction, docs/cells.md) is shipped too but not shown."""
    base = models_dir(root) / "cells"
    return {name: base / name for name in CELLS_MODELS if (base / f"{name}.json").is_file()}


def shipped_names(root=None) -> list[str]:
    """Every shipped model by the name that `resolve_checkpoint` accepts, e.g. ``grow/lizard-bptt``."""
    root = models_dir(root)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.json"))


def resolve_checkpoint(path) -> Path:
    """`path` (a checkpoint without suffix) if it exists; otherwise the shipped model of that name.

    Examples:
        >>> resolve_checkpoint("grow/lizard-equilibrium").name
        'lizard-equilibrium'
    """
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    if (base.parent / (base.name + ".json")).exists() or p.is_absolute():
        return base
    name = base.as_posix()
    name = name[len(_LEGACY_PREFIX):] if name.startswith(_LEGACY_PREFIX) else name
    shipped = models_dir() / name
    if name and (shipped.parent / (shipped.name + ".json")).exists():
        return shipped
    return base
