"""What a model was trained on: a dataset's identity record (its provenance).

A record is a JSON object. `name` says what the data is (``mnist``, ``idx:<folder>``, ``mazes:<generator>``,
``target:<file>``, ``tensors``), `source` where it came from (``vendored``, a folder, ``generated``, ``in
memory``), `sha256` is the hash of its contents, its identity (the same data copied elsewhere has the same
hash), and the rest describes it: ``train`` / ``test`` counts, ``shape`` of one sample, ``labels``; an IDX set
also has ``files``, the SHA-256 of each of its four files' uncompressed contents, so that a command that reads
only the test files can check them. A task computes its record in `setup` (`Task.data_record`); the engine
writes it into config.json and every checkpoint and compares it on ``--resume``; `eval`, `rollout` and the task
commands compare what they read with it, and `info` prints it.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

from deqnca.core.resources import mnist_dir
from deqnca.data.idx import MNIST_FILES, default_data_dir, load_split

STEMS = (*MNIST_FILES["train"], *MNIST_FILES["test"])
# the official MNIST files' uncompressed contents (the files deqnca ships)
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def idx_sha256(array: np.ndarray) -> str:
    """The SHA-256 of the uncompressed IDX file that holds `array` (unsigned bytes): its header, its bytes.

    Examples:
        >>> idx_sha256(np.zeros(3, np.uint8)) == hashlib.sha256(bytes([0, 0, 8, 1, 0, 0, 0, 3, 0, 0, 0])).hexdigest()
        True
    """
    a = np.ascontiguousarray(array, dtype=np.uint8)          # labels come back as int64 (0..9: exact)
    h = hashlib.sha256(bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape))
    h.update(a.data)
    return h.hexdigest()


def tensor_sha256(*tensors) -> str:
    """The SHA-256 of tensors' dtypes, shapes and bytes, in order."""
    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def source_of(folder) -> str:
    """``vendored`` for the MNIST files installed with deqnca, else the folder's absolute path."""
    path = Path(folder).resolve()
    return "vendored" if path == mnist_dir().resolve() else str(path)


def folder_of(record: dict) -> Path:
    """The folder a record's `source` names (``vendored``: the installed MNIST files)."""
    return mnist_dir() if record.get("source") == "vendored" else Path(str(record.get("source")))


def idx_name(folder, files: dict) -> str:
    """``mnist`` for files whose contents are the official MNIST files', else ``idx:<folder name>``."""
    official = all(MNIST_SHA256.get(stem) == sha for stem, sha in files.items())
    return "mnist" if official else f"idx:{Path(folder).resolve().name}"


def as_tensors(images: np.ndarray, labels: np.ndarray, device="cpu"):
    """``(x float32 [N,1,H,W] in [0,1], y int64 [N])``, exactly as `deqnca.data.idx.load_mnist` makes them."""
    import torch

    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels).to(device)


def load_idx(data_dir=None, splits=("train", "test"), verify_md5=None):
    """The arrays of an MNIST-layout folder (default: `default_data_dir`) and their files' SHA-256:
    ``({split: (images uint8, labels int64)}, {stem: sha256}, folder)``."""
    folder = default_data_dir() if data_dir is None else Path(data_dir)
    arrays, files = {}, {}
    for split in splits:
        images, labels = load_split(folder, split, verify_md5)
        stem_images, stem_labels = MNIST_FILES[split]
        files[stem_images], files[stem_labels] = idx_sha256(images), idx_sha256(labels)
        arrays[split] = images, labels
    return arrays, files, folder


def idx_data(data_dir=None, verify_md5=None, device="cpu") -> tuple[tuple, dict]:
    """``((x, y, x_test, y_test), record)``: an MNIST-layout folder's data as `load_mnist` gives it, and its
    record."""
    arrays, files, folder = load_idx(data_dir, verify_md5=verify_md5)
    (images, labels), (test_images, test_labels) = arrays["train"], arrays["test"]
    record = {"name": idx_name(folder, files), "source": source_of(folder),
              "sha256": hashlib.sha256("".join(f"{s} {files[s]}\n" for s in STEMS).encode()).hexdigest(),
              "files": {s: files[s] for s in STEMS}, "train": len(images), "test": len(test_images),
              "shape": [1, *map(int, images.shape[1:])],
              "labels": sorted(set(np.unique(labels).tolist()) | set(np.unique(test_labels).tolist()))}
    return (*as_tensors(images, labels, device), *as_tensors(test_images, test_labels, device)), record


def tensors_record(x, y, x_test, y_test) -> dict:
    """The record of data given as tensors (from Python): their hash, counts, sample shape and labels."""
    import torch

    labels = torch.unique(torch.cat([y.detach().cpu().reshape(-1), y_test.detach().cpu().reshape(-1)]))
    return {"name": "tensors", "source": "in memory", "sha256": tensor_sha256(x, y, x_test, y_test),
            "train": len(x), "test": len(x_test), "shape": list(x.shape[1:]), "labels": labels.tolist()}


def same_data(recorded: dict, current: dict) -> bool:
    """Whether two records are of the same data: the same contents (wherever they are now)."""
    return recorded.get("sha256") == current.get("sha256")


def short(record: dict) -> str:
    """``idx:fashion (sha256 1a2b3c4d5e6f, from /data/fashion)``: a record in a few words."""
    source = record.get("source")
    where = {None: "", "vendored": ", installed with deqnca", "in memory": ", given in memory",
             "generated": ", generated"}.get(source, f", from {source}")
    return f"{record.get('name', '?')} (sha256 {str(record.get('sha256', '?'))[:12]}{where})"


def describe(record: dict) -> str:
    """A record in one line, for `deqnca info`.

    Examples:
        >>> describe({"name": "mnist", "source": "vendored", "sha256": "0123456789abcdef", "train": 60000,
        ...           "test": 10000, "shape": [1, 28, 28], "labels": list(range(10))})
        'mnist (vendored; 60,000 train / 10,000 test, 1×28×28, labels 0–9; sha256 0123456789ab)'
    """
    details = [f"{record[k]:,} {k}" for k in ("train", "test") if isinstance(record.get(k), int)]
    details = [" / ".join(details)] if details else []
    if isinstance(record.get("shape"), list):
        details.append("×".join(map(str, record["shape"])))
    labels = record.get("labels")
    if isinstance(labels, list) and labels:
        contiguous = (len(labels) > 2 and all(type(v) is int for v in labels)
                      and labels == list(range(labels[0], labels[0] + len(labels))))
        details.append(f"labels {labels[0]}–{labels[-1]}" if contiguous else f"labels {labels}")
    details += [f"{key} {record[key]}" for key in ("sizes", "pad") if key in record]
    parts = [str(record.get("source", "?")), ", ".join(details), f"sha256 {str(record.get('sha256', '?'))[:12]}"]
    return f"{record.get('name', '?')} ({'; '.join(p for p in parts if p)})"


def recorded_folder(record: dict, who: str) -> Path:
    """The folder holding the IDX data `record` names, for a command given no --data-dir: for the official
    MNIST files the default folder (`default_data_dir`: any copy of them is that data), else its `source`; a
    one-line `ConfigError` naming the data where that is gone or was never a folder (tensors given from Python)."""
    from deqnca.core.configs import ConfigError

    if record.get("name") == "tensors" or "files" not in record:
        raise ConfigError(f"{who} was trained on {short(record)}, not on an IDX folder; pass --data-dir to a "
                          "folder with that data")
    if record.get("name") == "mnist":
        return default_data_dir()          # any copy of the official files is the data: $DEQNCA_DATA or the vendored
    folder = folder_of(record)
    if folder.is_dir():
        return folder
    raise ConfigError(f"{who} was trained on {short(record)}, which is not there now; pass --data-dir to a "
                      "folder with the same files")


def recorded_test_split(record: dict | None, who: str, data_dir=None, verify_md5=None, allow_other: bool = False,
                        device="cpu") -> tuple:
    """``(x_test, y_test, name, note)``: the test split a model trained on `record`'s data is measured on.

    Without `data_dir`, the recorded data's (`recorded_folder`); with it, that folder's, refused in one line
    (`ConfigError`) when its test files are not the recorded ones, unless `allow_other`. `name` names the data
    read; `note` is a line to show where the data cannot be checked (a record of tensors), else None. Without a
    record (a checkpoint from an older deqnca), the default folder's data, unchecked.
    """
    from deqnca.core.configs import ConfigError

    record = record if isinstance(record, dict) else None
    if data_dir is None and record is not None and record.get("name") != "tensors":
        data_dir = recorded_folder(record, who)
    arrays, files, folder = load_idx(data_dir, ("test",), verify_md5)
    name, note = idx_name(folder, files), None
    recorded = (record or {}).get("files")
    if isinstance(recorded, dict):
        if not allow_other and any(recorded.get(stem) != sha for stem, sha in files.items()):
            raise ConfigError(f"{who} was trained on {short(record)}; the test set in {folder} is other data "
                              f"({name}); pass --data-dir to the data it was trained on, or --allow-other-data to "
                              "measure it on this one")
    elif record is not None:
        note = f"{who} was trained on {short(record)}: whether {name} ({folder}) is that data cannot be checked"
    return (*as_tensors(*arrays["test"], device), name, note)
