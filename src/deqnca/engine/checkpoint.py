"""Checkpoints: tensors in safetensors, everything else in JSON; crash-safe; never pickled.

A checkpoint `name` is a JSON file `name.json` (model config, training config, progress, metrics,
optimizer hyper-parameters) that names its tensor file and that file's SHA-256. The JSON is the
manifest and is written last: a run's tensors go to a new file named by their content
(`name.<hash>.safetensors`), the manifest is then swapped in by an atomic rename, and only after that
is the previous tensor file removed. A kill at any instant therefore leaves either the old checkpoint
or the new one, complete (docs/guarantees.md). Shipped models keep the plain `name.safetensors`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from deqnca.core.configs import load_dataclass
from deqnca.core.fileio import InputError, atomic_write, check_regular_file, fault_point, fsync_dir, read_json_bounded
from deqnca.core.model import MODELS
from deqnca.core.resources import resolve_checkpoint, shipped_names


class CheckpointError(ValueError):
    pass


MAX_RECORD_BYTES = 64 << 20     # a checkpoint's JSON record (the shipped ones: under 1 MB)


def all_finite(tensors) -> bool:
    """Whether every tensor is free of NaN and inf — one host read for all of them."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    # a CUDA-graph step runs Adam in capturable mode with a device-tensor learning rate: stored as the
    # plain eager settings, so the checkpoint resumes anywhere (the graph step switches them back on)
    groups = [{k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()} for g in sd["param_groups"]]
    for g in groups:
        if g.get("capturable"):
            g["capturable"] = False
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_base(path) -> Path:
    """`path` without a .json / .safetensors suffix; any other dot is part of the name."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def _sibling(base: Path, suffix: str) -> Path:
    return base.parent / (base.name + suffix)


def _write_tensors(tensors: dict, path) -> None:
    """`save_file`, with an I/O failure raised as the `OSError` it is (safetensors raises its own error type,
    e.g. "I/O error: No space left on device (os error 28)" for a full disk)."""
    try:
        save_file(tensors, path, metadata={"format": "deqnca-1"})
    except Exception as e:
        code = re.search(r"os error (\d+)|code: (\d+)", str(e)) if type(e).__name__ == "SafetensorError" else None
        if code is None:
            raise
        number = int(code.group(1) or code.group(2))
        raise OSError(number, os.strerror(number)) from e


def _previous_tensors(json_path: Path, base: Path) -> Path | None:
    """The tensor file the checkpoint's current JSON names, where it is one `save_checkpoint` writes
    (`name.<hash>.safetensors` or `name.safetensors`): the file a new checkpoint replaces."""
    try:
        name = json.loads(json_path.read_text()).get("weights_file")
    except (OSError, ValueError, AttributeError):
        return None
    ours = isinstance(name, str) and (name == base.name + ".safetensors" or (
        name.startswith(base.name + ".") and re.fullmatch(r"[0-9a-f]{16}\.safetensors", name[len(base.name) + 1:])))
    return base.parent / name if ours else None


def save_checkpoint(path, model, optimizer=None, meta: dict | None = None, extra_tensors: dict | None = None,
                    content_addressed: bool = False, claim=None) -> Path:
    """Write checkpoint `path` (its .json manifest and its tensors). Refuses non-finite weights.

    Args:
        path: the checkpoint's name, e.g. ``runs/x/last`` (a .json/.safetensors suffix is ignored).
        model: a module with a ``config.to_dict()``.
        optimizer: its state goes into the tensors and the JSON as well (for resuming).
        meta: JSON-able record (progress, metrics, configs).
        extra_tensors: more tensors to keep (e.g. a task's sample pool).
        content_addressed: name the tensor file by its hash and keep the previous one until the new
            manifest is in place (run checkpoints); otherwise ``name.safetensors`` (shipped models).
            Only the tensor file the previous JSON named is then removed.
        claim: called with the new tensor file's name before it is renamed into place (a run folder's
            manifest records it there, so a kill never leaves a file no record lists).

    Returns:
        The checkpoint's base path.
    """
    base = checkpoint_base(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({', '.join(bad[:3])}); "
                              "the last good checkpoint is kept")
    info = dict(meta or {})
    info["model_config"] = model.config.to_dict()
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        info["optimizer"] = opt_meta
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    json_path = _sibling(base, ".json")
    previous = _previous_tensors(json_path, base) if content_addressed else None
    if content_addressed:
        staging = _sibling(base, ".staging.safetensors")
        atomic_write(staging, lambda tmp: _write_tensors(tensors, tmp))
        digest = _sha256(staging)
        st_path = _sibling(base, f".{digest[:16]}.safetensors")
        if claim is not None:
            claim(st_path.name)
        fault_point("before-rename", st_path)
        os.replace(staging, st_path)
        fsync_dir(st_path.parent)
    else:
        st_path = _sibling(base, ".safetensors")
        atomic_write(st_path, lambda tmp: _write_tensors(tensors, tmp))
        digest = _sha256(st_path)
    info["weights_sha256"] = digest
    info["weights_file"] = st_path.name
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1, default=float) + "\n"))
    if previous is not None and previous.name != st_path.name and previous.exists():
        # the new manifest is in place: the tensors the previous one named can go (nothing else is touched:
        # a file a kill left is removed by the run folder's next start, `engine.runfiles`)
        fault_point("before-cleanup", previous)
        previous.unlink(missing_ok=True)
    return base


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


# the shape of a checkpoint record's parts (a record whose parts have other types is refused on load)
_META_TYPES = {"model_config": dict, "train_config": dict, "history": list, "metrics": dict, "progress": dict,
               "optimizer": dict, "counters": dict, "meter": dict, "task_state": dict, "maze": dict, "provenance": dict,
               "data": dict, "kind": str, "weights_file": str, "weights_sha256": str, "status": str}


def read_checkpoint(path, verify: bool = True, tensors: bool = True) -> tuple[dict, dict]:
    """(tensors, meta) of checkpoint `path` (with or without suffix).

    Args:
        path: the checkpoint, e.g. ``runs/x/last``, or a shipped model's name, e.g. ``mnist-essay``.
        verify: check the tensor file against the SHA-256 its JSON records.
        tensors: also read the tensors (False: only the JSON; tensors is then {}).

    Returns:
        (tensors by name, the JSON record).
    """
    base = resolve_checkpoint(path)              # a path, or the name of a shipped model
    js = _sibling(base, ".json")
    if not js.exists():
        names = shipped_names()
        raise CheckpointError(f"{js}: missing; a checkpoint is a .json file naming its .safetensors file"
                              + (f" (or a shipped model: {', '.join(names)})" if names else ""))
    try:
        meta = read_json_bounded(js, MAX_RECORD_BYTES)
    except InputError as e:
        raise CheckpointError(f"{e}; restore it from the repository or the run folder") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{js}: not a checkpoint record (a JSON object); restore it")
    for key, kind in _META_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        if not isinstance(value, kind) or (kind is list and not all(isinstance(r, dict) for r in value)):
            raise CheckpointError(f"{js}: {key!r} is a {type(meta[key]).__name__}, not a "
                                  f"{'list of records' if kind is list else kind.__name__}; the checkpoint is "
                                  "corrupt, restore it")
    # `name.safetensors` beside the JSON (shipped and exported models, whose JSON may carry an older name);
    # otherwise the file the manifest names (run checkpoints, content-addressed)
    name = base.name + ".safetensors"
    if not (base.parent / name).exists():
        name = meta.get("weights_file", name)
    if not isinstance(name, str) or not _plain_name(name):
        raise CheckpointError(f"{js}: weights_file {name!r} is not a file name beside it; restore the checkpoint")
    st = base.parent / name
    if not st.exists():
        raise CheckpointError(f"{st}: missing; a checkpoint is a .safetensors file plus a .json file naming it")
    try:
        check_regular_file(st)            # a FIFO or a device would block the hash below, or never end
    except InputError as e:
        raise CheckpointError(f"{e}; restore the checkpoint") from None
    if not tensors:
        return {}, meta
    if verify and meta.get("weights_sha256") and _sha256(st) != meta["weights_sha256"]:
        raise CheckpointError(f"{st}: does not match the hash recorded in {js.name} (corrupt or "
                              "from another run); restore both files together")
    try:
        tensors = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{st}: not a readable safetensors file ({e}); restore it") from None
    return tensors, meta


from deqnca.engine.options import MAX_ITERATIONS, MAX_SIZE  # noqa: E402  (the same caps as the configs')


def check_config(config: dict, path) -> None:
    """One-line errors for a model config a checkpoint could carry but no model should run: iteration
    counts (1..MAX_ITERATIONS) and sizes out of range, non-finite numbers (checked before anything is built;
    every other option's range is its config dataclass's, checked when `load` reads the config)."""
    def walk(d, where=""):
        for k, v in d.items():
            key = f"{where}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            elif not math.isfinite(v):
                raise CheckpointError(f"{path}: {key} is {v}; the checkpoint's config is corrupt")
            elif ("iter" in k or k.endswith("steps")) and v > MAX_ITERATIONS:
                raise CheckpointError(f"{path}: {key} = {v} iterations (at most {MAX_ITERATIONS:,}); pass a "
                                      "smaller --max-iter or fix the checkpoint's JSON")
            elif ("iter" in k or k.endswith("steps")) and v < 1:
                raise CheckpointError(f"{path}: {key} = {v} iterations (at least 1); the checkpoint's config is "
                                      "corrupt")
            elif (k.endswith("channels") or k in ("hidden", "width", "classes", "blocks")) and not 0 < v <= MAX_SIZE:
                raise CheckpointError(f"{path}: {key} = {v} is out of range (1..{MAX_SIZE}); the checkpoint's "
                                      "config is corrupt")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: model_config is not a JSON object; the checkpoint is corrupt")
    walk(config)


def build_checked(factory, state: dict, path):
    """`factory()` after checking, on the meta device (no memory), that its tensors have the shapes the
    checkpoint holds: a config that disagrees with its weights fails before a large model is allocated."""
    try:
        with torch.device("meta"):
            probe = factory()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its model config is not usable ({e})") from None
    except Exception:          # a model that cannot be built on the meta device is checked after building
        probe = None
    if probe is not None:
        own = probe.state_dict()
        for k, v in state.items():
            if k in own and tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the config needs "
                                      f"{tuple(own[k].shape)}; the weights do not fit the model config")
    return factory()


def load_state(model, state: dict, path) -> None:
    """Load `state` into `model` after checking names, shapes, dtypes and finiteness (one-line errors)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, the config needs "
                                  f"{tuple(own[k].shape)}; the weights do not fit the model config")
        if v.dtype != own[k].dtype:
            raise CheckpointError(f"{path}: {k} is stored as {v.dtype}, the model needs {own[k].dtype}; "
                                  "re-export the checkpoint")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: {k} holds NaN or inf; the checkpoint is unusable, use an earlier one")
    model.load_state_dict(state)


# a checkpoint written before checkpoints named their kind holds an MNIST classifier (the first model kind)
DEFAULT_KIND = "mnist"


def checkpoint_kind(meta: dict) -> str:
    """The model kind of a checkpoint record: its ``kind`` (the task that wrote it), or ``"mnist"`` for a
    record from before kinds were recorded. Never guessed from the record's other keys."""
    return meta.get("kind", DEFAULT_KIND)


def model_class(kind: str, path="the checkpoint"):
    """The `CellularModel` class registered as `kind` in `MODELS`; a one-line `CheckpointError` otherwise."""
    if kind not in MODELS:
        raise CheckpointError(f"{path}: unknown model kind {kind!r} (registered: {', '.join(MODELS.names())}); "
                              "load the module that registers it first, e.g. with --plugin")
    return MODELS.get(kind)


def load(name_or_path, device="cpu", kind: str | None = None):
    """(model, meta): the model of any checkpoint, shipped or trained, in eval mode on `device` — the one
    function that reads a checkpoint into a model.

    Its kind (``meta["kind"]``, `checkpoint_kind`) names the class in `MODELS`; the class's ``Config`` is
    read from ``model_config`` by the strict `load_dataclass`, the model is built from it and the weights
    are loaded after checking their names, shapes, dtypes and finiteness. Only tensors and JSON are read,
    nothing is unpickled. Kinds register when their modules are imported: `deqnca.load` imports the
    built-in ones first.

    Args:
        name_or_path: a checkpoint (``runs/x/last``, with or without suffix) or a shipped model's name
            (``mnist-essay``, ``grow/lizard-equilibrium``, ``maze/geodesic``, ``cells/consensus``).
        device: where the model goes.
        kind: the kind the caller needs (e.g. a task's command); a checkpoint of another kind is a
            one-line error naming both.

    Returns:
        (the model, the checkpoint's JSON record).
    """
    tensors, meta = read_checkpoint(name_or_path)
    found = checkpoint_kind(meta)
    if kind is not None and found != kind:
        raise CheckpointError(f"{name_or_path}: a {found!r} checkpoint, not a {kind!r} one; this command needs "
                              f"a {kind} model")
    cls = model_class(found, name_or_path)
    if not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{name_or_path}: no model_config in its JSON; not a model checkpoint")
    check_config(meta["model_config"], name_or_path)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = build_checked(lambda: cls(load_dataclass(cls.Config, meta["model_config"], what="model config")),
                          state, name_or_path)
    load_state(model, state, name_or_path)
    return model.to(device).eval(), meta


def load_optimizer_state(optimizer, tensors: dict, meta: dict, path="the checkpoint") -> None:
    """Restore an optimizer's state saved by `save_checkpoint` (tensors and JSON parts) from checkpoint `path`."""
    if "optimizer" in meta:
        try:
            optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit ({type(e).__name__}: {e}); the "
                                  "checkpoint is corrupt, or from another model") from None


def check_run_record(meta: dict, path) -> None:
    """One-line errors for a run checkpoint's record that lacks what `--resume` reads (progress, history)."""
    progress = meta.get("progress")
    ok = (isinstance(meta.get("train_config"), dict) and isinstance(meta.get("history", []), list)
          and isinstance(meta.get("counters", {}), dict) and isinstance(progress, dict)
          and isinstance(progress.get("global_step"), int) and not isinstance(progress.get("global_step"), bool)
          and progress["global_step"] >= 0 and isinstance(progress.get("elapsed_s"), (int, float)))
    if not ok:
        raise CheckpointError(f"{path}: not a run checkpoint that can be resumed (its train_config, progress or "
                              "history is missing or malformed); start a new run in another --out")
