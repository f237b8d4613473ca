"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically; never pickled.

A checkpoint `name` is two files: `name.safetensors` (model weights and buffers, optimizer tensors)
and `name.json` (model config, training config, progress, metrics, optimizer hyper-parameters and
the SHA-256 of the tensor file). The JSON is written last and names the tensor file's hash, so a
crash between the two writes is detected on load instead of silently pairing mismatched files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    pass


def all_finite(tensors) -> bool:
    """Whether every tensor is free of NaN and inf — one host read for all of them."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path` (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; checkpoints are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def save_checkpoint(path, model, optimizer=None, meta: dict | None = None) -> Path:
    """Write `path`.safetensors + `path`.json. Refuses non-finite weights (nothing is saved)."""
    base = Path(path).with_suffix("")
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
    st_path = base.with_suffix(".safetensors")
    atomic_write(st_path, lambda tmp: save_file(tensors, tmp, metadata={"format": "deqnca-1"}))
    info["weights_sha256"] = _sha256(st_path)
    info["weights_file"] = st_path.name
    atomic_write(base.with_suffix(".json"),
                  lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1, default=float) + "\n"))
    return base


def read_checkpoint(path, verify: bool = True) -> tuple[dict, dict]:
    """(tensors, meta) of checkpoint `path` (with or without suffix)."""
    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    js, st = base.with_suffix(".json"), base.with_suffix(".safetensors")
    for p in (js, st):
        if not p.exists():
            raise CheckpointError(f"{p}: missing; a checkpoint is a .safetensors file plus a .json file "
                                  "of the same name")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js}: not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                              "the file is corrupt, restore it from the repository or the run folder") from None
    if verify and meta.get("weights_sha256") and _sha256(st) != meta["weights_sha256"]:
        raise CheckpointError(f"{st}: does not match the hash recorded in {js.name} (corrupt or "
                              "from another run); restore both files together")
    try:
        tensors = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{st}: not a readable safetensors file ({e}); restore it") from None
    return tensors, meta


def load_model(path, device="cpu"):
    """(model, meta) from a checkpoint. Only tensors and JSON are read: nothing is unpickled."""
    from ..model import EquilibriumModel

    tensors, meta = read_checkpoint(path)
    model = EquilibriumModel(meta["model_config"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit the model config ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device), meta


def load_optimizer_state(optimizer, tensors: dict, meta: dict) -> None:
    if "optimizer" in meta:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
