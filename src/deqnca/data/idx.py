"""MNIST-layout IDX file loading without torchvision.

deqnca ships the four official MNIST files as package data (``deqnca/_data/mnist``),
so training never needs the network. ``download_mnist`` exists only as an
explicit opt-in for setups that lack the vendored copy.

Every failure is a :class:`DataError` with a one-line message that names the
file and says what to do, because a stack trace from ``numpy.frombuffer`` tells
a user nothing about a half-copied dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ..resources import mnist_dir

__all__ = [
    "DataError", "read_idx", "find_file", "load_split", "load_mnist",
    "default_data_dir", "download_mnist", "MNIST_FILES", "MNIST_MD5", "DEFAULT_MIRRORS",
]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Hashes of the *uncompressed* files: gzip output differs between compressors,
# the IDX payload does not.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_HINT = "re-copy the file or pass --data-dir to a folder with the four MNIST IDX files"


class DataError(ValueError):
    """A dataset file is missing, malformed, or not the expected file."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {_HINT}")
    return _gunzip(path) if path.suffix == ".gz" else path.read_bytes()


def _gunzip(path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt gzip ({e}); {_HINT}") from None


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number); {_HINT}")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX type 0x{dtype_code:02x} (only unsigned byte 0x08); {_HINT}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported IDX rank {ndim} (expected 1..4); {_HINT}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header (expected {header} bytes, got {len(raw)}); {_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise DataError(f"{path}: truncated (expected {expected} bytes, got {len(raw)}); {_HINT}")
    if len(raw) > expected:
        raise DataError(f"{path}: {len(raw) - expected} trailing bytes after the IDX payload; {_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path) -> np.ndarray:
    """Read a raw or ``.gz`` IDX file of unsigned bytes into a uint8 array."""
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def find_file(data_dir, stem: str) -> Path:
    """Locate ``stem`` in ``data_dir`` under the spellings people actually ship."""
    data_dir = Path(data_dir)
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, as Kaggle ships it
    names = list(dict.fromkeys([stem, stem + ".gz", dotted, dotted + ".gz"]))
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"{data_dir}: none of {', '.join(names)} found; "
                    "pass --data-dir to a folder with the MNIST IDX files")


def default_data_dir() -> Path:
    """``$DEQNCA_DATA`` if set, else the MNIST files installed with deqnca (``deqnca.resources.mnist_dir``)."""
    env = os.environ.get("DEQNCA_DATA")
    if env:
        return Path(env)
    return mnist_dir()


def load_split(data_dir, split: str = "train", verify_md5: bool | None = None):
    """Load ``(images uint8 [N,28,28], labels int64 [N])`` for ``split``.

    ``verify_md5=None`` verifies only when ``data_dir`` is the default vendored
    folder, which must hold the official files; any other folder may hold
    MNIST-layout data such as Fashion-MNIST, so it is checked for shape only.
    """
    if split not in MNIST_FILES:
        raise DataError(f"unknown split {split!r}; expected one of {sorted(MNIST_FILES)}")
    data_dir = Path(data_dir)
    if verify_md5 is None:
        try:
            verify_md5 = data_dir.resolve() == default_data_dir().resolve()
        except DataError:
            verify_md5 = False
    arrays = []
    for stem in MNIST_FILES[split]:
        path = find_file(data_dir, stem)
        raw = _read_bytes(path)
        if verify_md5 and hashlib.md5(raw).hexdigest() != MNIST_MD5[stem]:
            raise DataError(f"{path}: MD5 mismatch, not the official MNIST file; re-copy it, "
                            "or pass --no-verify for other datasets such as Fashion-MNIST")
        arrays.append((path, _parse_idx(raw, path)))
    (ipath, images), (lpath, labels) = arrays
    if images.ndim != 3:
        raise DataError(f"{ipath}: expected a 3-d image array, got shape {images.shape}; {_HINT}")
    if labels.ndim != 1:
        raise DataError(f"{lpath}: expected a 1-d label array, got shape {labels.shape}; {_HINT}")
    if len(images) != len(labels):
        raise DataError(f"{lpath}: {len(labels)} labels for {len(images)} images in {ipath.name}; {_HINT}")
    return images, labels.astype(np.int64)  # uint8 labels are < 256 by construction


def load_mnist(data_dir=None, split: str = "train", verify_md5: bool | None = None, device="cpu"):
    """Return ``(x float32 [N,1,28,28] in [0,1], y int64 [N])`` torch tensors."""
    import torch  # keeps read_idx usable where torch is not installed

    images, labels = load_split(default_data_dir() if data_dir is None else data_dir, split, verify_md5)
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels).to(device)


def download_mnist(dest, mirrors=DEFAULT_MIRRORS, timeout: float = 30) -> Path:
    """Opt-in download of the four MNIST files as ``<stem>.gz`` into ``dest``.

    Each mirror is tried in turn; a file is only moved into place once its
    decompressed MD5 matches, so an interrupted run never leaves a bad file.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stem, md5 in MNIST_MD5.items():
        target = dest / f"{stem}.gz"
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + f"/{stem}.gz"
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{stem}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    out.write(resp.read())
                got = hashlib.md5(_gunzip(tmp)).hexdigest()
                if got != md5:
                    raise DataError(f"MD5 {got} != {md5}")
                os.replace(tmp, target)
                break
            except (OSError, DataError, ValueError) as e:
                errors.append(f"{url}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError(f"{target}: download failed from every mirror ({'; '.join(errors)}); "
                            "copy the files by hand and pass --data-dir")
    return dest

