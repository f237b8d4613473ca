"""IDX loader: synthetic files for every failure mode, plus the vendored MNIST."""
import gzip
import struct

import numpy as np
import pytest

from deqnca.core.resources import mnist_dir
from deqnca.data.idx import (
    MNIST_FILES,
    MNIST_MD5,
    DataError,
    download_mnist,
    find_file,
    load_mnist,
    load_split,
    read_idx,
)

VENDORED = mnist_dir()
needs_vendored = pytest.mark.skipif(
    not all((VENDORED / f"{s}.gz").is_file() for s in MNIST_MD5),
    reason=f"vendored MNIST files not present in {VENDORED}",
)


def idx_bytes(arr, type_byte=0x08):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_split(d, n_img=5, n_lab=5, split="train"):
    rng = np.random.default_rng(0)
    img_stem, lab_stem = MNIST_FILES[split]
    write(d / f"{img_stem}.gz", idx_bytes(rng.integers(0, 256, (n_img, 28, 28))), gz=True)
    write(d / lab_stem, idx_bytes(rng.integers(0, 10, n_lab)))


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write(tmp_path / ("a.gz" if gz else "a"), idx_bytes(arr), gz=gz))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_wrong_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros(4)))
    data[0] = 7
    with pytest.raises(DataError, match="magic"):
        read_idx(write(tmp_path / "f", bytes(data)))


def test_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="0x0d"):  # float32 IDX
        read_idx(write(tmp_path / "f", idx_bytes(np.zeros(4), type_byte=0x0D)))


def test_bad_rank(tmp_path):
    with pytest.raises(DataError, match="rank"):
        read_idx(write(tmp_path / "f", bytes([0, 0, 8, 0])))


def test_truncated(tmp_path):
    path = write(tmp_path / "imgs.gz", idx_bytes(np.zeros((3, 28, 28)))[:-10], gz=True)
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(path)
    msg = str(e.value)
    assert "imgs.gz" in msg and "\n" not in msg and "expected 2368 bytes, got 2358" in msg


def test_trailing_bytes(tmp_path):
    with pytest.raises(DataError, match="3 trailing bytes"):
        read_idx(write(tmp_path / "f", idx_bytes(np.zeros(4)) + b"xyz"))


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((10, 10))))
    for name, data in [("notgz.gz", b"hello world, not gzip"), ("cut.gz", good[: len(good) // 2])]:
        with pytest.raises(DataError, match="corrupt gzip") as e:
            read_idx(write(tmp_path / name, data))
        assert name in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope-idx1-ubyte: file not found"):
        read_idx(tmp_path / "nope-idx1-ubyte")
    with pytest.raises(DataError) as e:
        load_split(tmp_path, "test")
    assert str(tmp_path) in str(e.value) and "t10k-images-idx3-ubyte.gz" in str(e.value)


def test_find_file_alternative_spellings(tmp_path):
    write(tmp_path / "train-images.idx3-ubyte", b"")
    assert find_file(tmp_path, "train-images-idx3-ubyte").name == "train-images.idx3-ubyte"
    write(tmp_path / "train-images-idx3-ubyte.gz", b"")
    assert find_file(tmp_path, "train-images-idx3-ubyte").name == "train-images-idx3-ubyte.gz"


def test_load_split_synthetic(tmp_path):
    make_split(tmp_path, 7, 7)
    images, labels = load_split(tmp_path, "train")  # non-default dir: no MD5 check
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int64
    x, y = load_mnist(tmp_path, "train")
    assert tuple(x.shape) == (7, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, rtol=1e-6)
    assert str(y.dtype) == "torch.int64"


def test_count_mismatch(tmp_path):
    make_split(tmp_path, 5, 4)
    with pytest.raises(DataError, match="4 labels for 5 images"):
        load_split(tmp_path, "train")


def test_label_rank_checked(tmp_path):
    make_split(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros((5, 2))))
    with pytest.raises(DataError, match="1-d label"):
        load_split(tmp_path, "train")


def test_md5_mismatch(tmp_path):
    make_split(tmp_path)
    with pytest.raises(DataError, match="not the official MNIST file.*--no-verify"):
        load_split(tmp_path, "train", verify_md5=True)


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        load_split(tmp_path, "val")


@needs_vendored
def test_real_test_split():
    x, y = load_mnist(VENDORED, "test", verify_md5=True)
    assert tuple(x.shape) == (10000, 1, 28, 28)
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert 0.0 <= float(x.min()) and float(x.max()) == 1.0


@needs_vendored
def test_download_from_file_mirror(tmp_path):
    dest = tmp_path / "dl"
    mirrors = [(tmp_path / "missing").as_uri() + "/", VENDORED.as_uri()]
    assert download_mnist(dest, mirrors=mirrors) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{s}.gz" for s in MNIST_MD5)
    images, labels = load_split(dest, "test", verify_md5=True)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def test_download_corrupted_fails(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for stem in MNIST_MD5:  # valid gzip, wrong content: must fail the MD5 check
        write(mirror / f"{stem}.gz", idx_bytes(np.zeros(3)), gz=True)
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="download failed from every mirror.*MD5"):
        download_mnist(dest, mirrors=[mirror.as_uri()])
    assert not any(dest.iterdir())  # no partial or bad file left behind


def test_default_dir_is_md5_verified(tmp_path, monkeypatch):
    make_split(tmp_path)
    load_split(tmp_path, "train")  # any other folder: shape checks only
    monkeypatch.setenv("DEQNCA_DATA", str(tmp_path))  # now it *is* the default dir
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_split(tmp_path, "train")
    load_split(tmp_path, "train", verify_md5=False)
