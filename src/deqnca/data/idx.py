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
import math
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from deqnca.core.fileio import InputError, check_regular_file
from deqnca.core.resources import mnist_dir

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
CLASSES = 10                  # labels are 0..9
_HINT = "re-copy the file or pass --data-dir to a folder with the four MNIST IDX files"


class DataError(ValueError):
    """A dataset file is missing, malformed, or not the expected file."""


MAX_IDX_BYTES = 256 << 20     # the payload an IDX file may declare (MNIST's largest file: 47 MB)
_MARGIN = 4096                # bytes read past the declared payload, to tell trailing data
_CHECK_LENGTH_ABOVE = 64 << 20  # larger gzip payloads: their length is checked before any is kept


def _open(path: Path):
    try:
        check_regular_file(path)                  # a FIFO or a device: refused before it is opened
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {_HINT}") from None
    except InputError as e:
        raise DataError(f"{e}; {_HINT}") from None
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_up_to(fh, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_into(fh, buf: np.ndarray) -> int:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = fh.readinto(view[got:got + (1 << 20)])     # in chunks: gzip's readinto copies through a buffer
        if not n:
            break
        got += n
    return got


def _gzip_length(path: Path, limit: int) -> int:
    """The decompressed length of gzip file `path`, counted in chunks (nothing kept), stopping past `limit`."""
    n = 0
    with gzip.open(path, "rb") as fh:
        while n <= limit:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
    return n


def _read_header(fh, path: Path) -> tuple[bytes, tuple[int, ...]]:
    head = _read_up_to(fh, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number); {_HINT}")
    dtype_code, ndim = head[2], head[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX type 0x{dtype_code:02x} (only unsigned byte 0x08); {_HINT}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported IDX rank {ndim} (expected 1..4); {_HINT}")
    head += _read_up_to(fh, 4 * ndim)
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated header (expected {4 + 4 * ndim} bytes, got {len(head)}); {_HINT}")
    return head, struct.unpack(f">{ndim}I", head[4:])


def _read_idx(path: Path, md5: bool = False) -> tuple[np.ndarray, str | None]:
    """(array, MD5 of the uncompressed file or None). The header is read first; no more than the payload
    it declares (plus a small margin to detect trailing bytes) is ever decompressed or kept, and a
    payload above MAX_IDX_BYTES is refused before reading it, so a crafted file cannot exhaust memory."""
    gz = path.suffix == ".gz"
    try:
        with _open(path) as fh:
            head, dims = _read_header(fh, path)
            payload = math.prod(dims)
            expected = len(head) + payload
            if payload > MAX_IDX_BYTES:
                shape = " x ".join(map(str, dims))
                raise DataError(f"{path}: its header declares a {shape} array ({payload:,} bytes), "
                                f"more than the {MAX_IDX_BYTES >> 20} MiB an IDX file may hold here; {_HINT}")
            if not gz:        # a plain file's length is known before reading it
                size = os.fstat(fh.fileno()).st_size
                if size < expected:
                    raise DataError(f"{path}: truncated (expected {expected} bytes, got {size}); {_HINT}")
                if size > expected:
                    raise DataError(f"{path}: {size - expected} trailing bytes after the IDX payload; {_HINT}")
            elif payload > _CHECK_LENGTH_ABOVE:
                length = _gzip_length(path, expected + _MARGIN)
                if length > expected:
                    raise DataError(f"{path}: more data than its header declares ({expected:,} bytes); {_HINT}")
            buf = np.empty(payload + (_MARGIN if gz else 0), dtype=np.uint8)
            got = _read_into(fh, buf)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip ({e}); {_HINT}") from None
    except OSError as e:
        raise DataError(f"{path}: {'corrupt gzip' if gz else 'cannot read it'} ({e}); {_HINT}") from None
    if got < payload:
        raise DataError(f"{path}: truncated (expected {expected} bytes, got {len(head) + got}); {_HINT}")
    if got > payload:
        more = "at least " if got == len(buf) else ""
        raise DataError(f"{path}: {more}{got - payload} trailing bytes after the IDX payload; {_HINT}")
    array = buf[:payload].reshape(dims)
    if not md5:
        return array, None
    h = hashlib.md5(head)
    h.update(memoryview(buf)[:payload])
    return array, h.hexdigest()


def _md5_of_gzip(path) -> str:
    """MD5 of a gzip file's decompressed contents, computed in chunks (a download is checked in constant memory)."""
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt gzip ({e}); {_HINT}") from None
    return h.hexdigest()


def read_idx(path) -> np.ndarray:
    """Read a raw or ``.gz`` IDX file of unsigned bytes into a uint8 array."""
    return _read_idx(Path(path))[0]


def _spellings(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, as Kaggle ships it
    return list(dict.fromkeys([stem, stem + ".gz", dotted, dotted + ".gz"]))


def find_files(data_dir, stem: str) -> list[Path]:
    """Every spelling of ``stem`` present in ``data_dir`` (raw or ``.gz``, dashed or dotted), in the order
    `find_file` prefers them; a one-line `DataError` when there is none."""
    data_dir = Path(data_dir)
    names = _spellings(stem)
    found = [data_dir / name for name in names if os.path.lexists(data_dir / name)]
    if not found:
        raise DataError(f"{data_dir}: none of {', '.join(names)} found; "
                        "pass --data-dir to a folder with the MNIST IDX files")
    return found


def find_file(data_dir, stem: str) -> Path:
    """Locate ``stem`` in ``data_dir`` under the spellings people actually ship."""
    return find_files(data_dir, stem)[0]


def _read_one_of(paths: list[Path], md5: bool) -> tuple[Path, np.ndarray, str | None]:
    """(path, array, MD5) of the first of `paths`; where the folder holds several spellings of one file
    (a raw file and a .gz, say), they must hold the same array, else a one-line error names both."""
    path, array, digest = paths[0], *_read_idx(paths[0], md5=md5)
    for other in paths[1:]:
        other_array = _read_idx(other)[0]
        if other_array.shape != array.shape or not np.array_equal(other_array, array):
            raise DataError(f"{path} and {other} hold different data; keep one of them (remove the other) "
                            "so that it is clear which is read")
    return path, array, digest


def default_data_dir() -> Path:
    """``$DEQNCA_DATA`` if set, else the MNIST files installed with deqnca (``deqnca.core.resources.mnist_dir``)."""
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
        path, array, digest = _read_one_of(find_files(data_dir, stem), verify_md5)
        if verify_md5 and digest != MNIST_MD5[stem]:
            raise DataError(f"{path}: MD5 mismatch, not the official MNIST file; re-copy it, "
                            "or pass --no-verify for other datasets such as Fashion-MNIST")
        arrays.append((path, array))
    (ipath, images), (lpath, labels) = arrays
    if images.ndim != 3:
        raise DataError(f"{ipath}: expected a 3-d image array, got shape {images.shape}; {_HINT}")
    if labels.ndim != 1:
        raise DataError(f"{lpath}: expected a 1-d label array, got shape {labels.shape}; {_HINT}")
    if len(images) == 0:
        raise DataError(f"{ipath}: holds no images (an empty {split} set); {_HINT}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{ipath}: its images are {images.shape[1]}×{images.shape[2]} pixels (empty); {_HINT}")
    if len(images) != len(labels):
        raise DataError(f"{lpath}: {len(labels)} labels for {len(images)} images in {ipath.name}; {_HINT}")
    if labels.size and int(labels.max()) >= CLASSES:
        where = int(np.argmax(labels >= CLASSES))
        raise DataError(f"{lpath}: label {int(labels[where])} at position {where}; MNIST-layout labels are "
                        f"0..{CLASSES - 1}; {_HINT}")
    return images, labels.astype(np.int64)


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
                    shutil.copyfileobj(resp, out, 1 << 20)
                got = _md5_of_gzip(tmp)
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

