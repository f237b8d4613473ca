"""Inputs and outputs that are hostile in ways tests/test_hostile.py does not cover (docs/guarantees.md,
"Inputs read with bounds, outputs never through a link"): outputs are never written through a link in their
place, a maze cache is accepted for its contents (not its checksum), every input file is read only if it is
a regular file under a size cap (an image's pixel count is checked from its header), library errors are one
line, and the exit codes are the documented ones.

Each test fails on commit cfc3081 (the code before these checks) and passes now (but for one case, a JSON
error, which was one line there already); the docstrings say how it failed there. They drive the command
line, so they run against either code base (``PYTHONPATH=<old checkout>/src python -m pytest
tests/test_inputs.py``). Most run in this process under a
deadline (a FIFO that blocks fails the test, it does not hang it); the two that measure memory run in a
subprocess (marked slow).
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import deqnca  # noqa: E402
from deqnca.cli import main  # noqa: E402
from test_hostile import (  # noqa: E402
    ESSAY,
    LIZARD,
    MAX_RSS_MB,
    MODELS,
    assert_error,
    craft,
    idx_bytes,
    run,
    tiny_train,
    write_split,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as in tests/test_hostile.py: these cases are tiny."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-mnist")
    write_split(d, "train", 64)
    return write_split(d, "test", 16, seed=1)


FAST = 20                       # seconds: the deadline of a case that must not block (a FIFO)


# ---- outputs are never written through a link ------------------------------------------------------

def _links_in_the_way(out: Path, names, outside: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).symlink_to(outside)


def _rollout(tmp_path, out):
    return ["rollout", "--steps", "2", "--out", out, "--device", "cpu"], [
        "mnist-essay-7-frames.png", "mnist-essay-7-frames.svg", "mnist-essay-7.gif", "mnist-essay-7-curves.png",
        "mnist-essay-7-curves.svg", "mnist-essay-7.json"]


def _web(tmp_path, out):
    return ["web", "--out", out, "--no-examples"], ["index.html", "style.css", "models.js", "mazes.js", "app.js",
                                                    "weights.js"]


@pytest.mark.parametrize("command", [_rollout, _web], ids=["rollout", "web"])
def test_an_output_never_overwrites_what_a_link_in_its_place_points_at(tmp_path, capsys, command):
    """cfc3081: `rollout --out` and `web --out` opened each output file by its name, so a link where a file
    goes had its target overwritten (the file outside the folder held a GIF or the page afterwards)."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours to overwrite")
    out = tmp_path / "out"
    argv, names = command(tmp_path, out)
    _links_in_the_way(out, names, outside)
    rc, err = run(argv, capsys)
    assert rc == 0, err[-2000:]
    assert outside.read_text() == "not yours to overwrite"
    for name in names:
        assert not (out / name).is_symlink() and (out / name).is_file(), name      # the link was replaced
    assert not list(out.glob(".*.tmp"))                                             # no temporary file left


# ---- a maze cache is validated by its contents -----------------------------------------------------

def _solid_walls(lay):
    lay[:] = 0


def _a_cycle(lay):
    """One wall between two cells opened and one passage off the path closed: still n² − 1 passages and the
    same path, but a cycle and a part cut off (the first such pair that is not a perfect maze again)."""
    from deqnca.tasks.maze.analysis import is_perfect

    side = lay.shape[1]
    between = [tuple(p) for p in np.argwhere(np.ones((side, side))) if 0 < p[0] < side - 1 and 0 < p[1] < side - 1
               and p[0] % 2 != p[1] % 2]
    walls = [p for p in between if lay[0][p] == 0]
    spare = [p for p in between if lay[0][p] == 1]               # open, off the path
    for wall in walls:
        for passage in spare:
            trial = lay[0].copy()
            trial[wall], trial[passage] = 1, 0
            if not is_perfect(trial):
                lay[0] = trial
                return
    raise AssertionError("no such pair")


def _path_shortened(lay):
    on = np.argwhere(((lay[1] & 4) > 0) & ((lay[1] & 3) == 1))
    lay[1][tuple(on[len(on) // 2])] &= 3                        # one path pixel unmarked


def _two_starts(lay):
    cell = np.argwhere(lay[2] == 1)[0]
    lay[2][tuple(cell)] = 2


@pytest.mark.parametrize("corrupt", [_solid_walls, _a_cycle, _path_shortened, _two_starts],
                         ids=["solid walls", "a cycle", "a wrong path", "two starts"])
def test_a_maze_cache_is_accepted_for_its_contents_not_its_hash(tmp_path, capsys, corrupt):
    """cfc3081 trusted a cache whose hash matched its layouts: layouts replaced by solid walls (or a maze with
    a cycle, a wrong path, two starts) with the hash recomputed were loaded and scored."""
    from deqnca.tasks.maze import generate as mazes

    cache = tmp_path / "cache"
    assert run(["maze", "generate", "--sizes", "9", "--count", "6", "--cache", cache], capsys)[0] == 0
    path = mazes.cache_path(cache, "test", 9, 0)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    layouts = entries["layouts"].copy()
    corrupt(layouts)
    entries.update(layouts=layouts, sha256=mazes.layouts_digest(layouts))           # a consistent hash
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **entries)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = mazes.load_set(9, 6, "test", cache=cache)
    assert np.array_equal(loaded, mazes.generate_set(9, 6, "test")), "an invalid cache was used"
    assert any("not valid mazes" in str(w.message) for w in caught), [str(w.message) for w in caught]
    with np.load(path) as f:                                    # regenerated from its seed, in place
        assert np.array_equal(f["layouts"], loaded)


def test_a_solid_wall_maze_cache_with_a_recomputed_hash_is_not_scored(tmp_path, capsys):
    """cfc3081: `maze eval` scored solid walls with a recomputed hash as 'solved 100%' (an empty path is what a
    model predicts on a black image); now the cache is regenerated from its seed and the real mazes scored."""
    from deqnca.tasks.maze import generate as mazes

    cache, out = tmp_path / "cache", tmp_path / "eval"
    assert run(["maze", "generate", "--sizes", "9", "--count", "8", "--cache", cache], capsys)[0] == 0
    path = mazes.cache_path(cache, "test", 9, 0)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    walls = np.zeros_like(entries["layouts"])
    entries.update(layouts=walls, sha256=mazes.layouts_digest(walls))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, err = run(["maze", "eval", MODELS / "maze" / "dt", "--sizes", "9", "--limit-per-size", "8",
                       "--cache", cache, "--out", out, "--device", "cpu"], capsys)
    assert rc == 0, err[-2000:]
    with np.load(path) as f:
        assert np.array_equal(f["layouts"], mazes.generate_set(9, 8, "test")), "solid walls were scored"


def test_the_content_check_agrees_with_bfs_on_every_generator_and_on_random_damage():
    """The vectorised check (`analysis.invalid_layouts`, new) against the per-maze reference: `is_perfect`
    and the marked path equal to `bfs_path`. (cfc3081 has no content check: ImportError there.)"""
    from deqnca.tasks.maze import generate as mazes
    from deqnca.tasks.maze.analysis import bfs_path, invalid_layouts, is_perfect

    for generator in mazes.GENERATORS:
        assert len(invalid_layouts(mazes.generate_set(13, 40, generator=generator), 13)[0]) == 0, generator
    layouts = mazes.generate_set(9, 20)
    rng = np.random.default_rng(0)
    for t in range(200):
        lay = layouts[t % 20].copy()
        for _ in range(rng.integers(1, 3)):
            lay[tuple(rng.integers(0, 11, 2))] = rng.choice([0, 1, 2, 3, 5, 6, 7])
        kind = lay & 3
        try:
            valid = bool((kind == 2).sum() == 1 and (kind == 3).sum() == 1 and is_perfect(lay)
                         and not ((lay & 4) & (kind == 0)).any() and np.array_equal((lay & 4) > 0, bfs_path(lay)))
        except IndexError:
            valid = False
        assert (len(invalid_layouts(lay[None], 9)[0]) == 0) == valid, (t, lay)


# ---- bounded reads: regular files only, size caps before reading ------------------------------------

def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


FIFO_CASES = {
    # case: (argv from tmp_path, what becomes a FIFO, exit code, words)
    "--config": (lambda t: ["train", "--config", t / "config.json", "--out", t / "run", "--device", "cpu"],
                 lambda t: t / "config.json", 2, ["--config", "FIFO"]),
    "checkpoint record": (lambda t: ["info", t / "ck"], lambda t: t / "ck.json", 1, ["ck.json", "FIFO"]),
    "checkpoint tensors": (lambda t: ["eval", t / "ck", "--limit", "2", "--device", "cpu"],
                           lambda t: t / "ck.safetensors", 1, ["ck.safetensors", "FIFO"]),
    "IDX file": (lambda t: ["eval", ESSAY, "--data-dir", t / "data", "--limit", "2", "--device", "cpu"],
                 lambda t: t / "data" / "t10k-images-idx3-ubyte", 1, ["t10k-images-idx3-ubyte", "FIFO"]),
    "growing target": (lambda t: ["grow", "train", "--target", t / "target.png", "--steps", "1", "--out",
                                  t / "run", "--device", "cpu"], lambda t: t / "target.png", 1, ["target.png", "FIFO"]),
}


@pytest.mark.parametrize("case", list(FIFO_CASES))
def test_a_fifo_in_place_of_an_input_file_is_a_one_line_error_not_a_hang(tmp_path, capsys, case):
    """cfc3081 opened these files without checking that they are regular files: a FIFO with no writer blocked
    `--config`, the checkpoint's record and tensors (hashing them) forever, and the IDX reader and `--target`
    called a FIFO 'not found'."""
    argv, where, code, words = FIFO_CASES[case]
    craft(tmp_path, ESSAY, "ck")
    write_split(tmp_path / "data", "test", 16)
    _fifo(where(tmp_path))
    rc, err = run(argv(tmp_path), capsys, deadline=FAST)
    assert_error(rc, err, code, *words)
    assert not (tmp_path / "run").exists()


def test_a_fifo_in_place_of_a_maze_cache_is_replaced_not_read(tmp_path, capsys):
    """cfc3081: np.load opened a FIFO at a cache file's name and blocked forever."""
    from deqnca.tasks.maze import generate as mazes

    path = _fifo(mazes.cache_path(tmp_path / "cache", "test", 9, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, err = run(["maze", "generate", "--sizes", "9", "--count", "4", "--cache", tmp_path / "cache"], capsys,
                      deadline=FAST)
    assert rc == 0, err[-2000:]
    assert path.is_file() and not path.is_fifo()
    with np.load(path) as f:
        assert np.array_equal(f["layouts"], mazes.generate_set(9, 4, "test"))


def test_a_maze_cache_declaring_a_huge_array_is_regenerated_not_allocated(tmp_path):
    """cfc3081 let np.load allocate the array a cache's .npy header declares (here 121 GB for a file of a
    few hundred bytes): a MemoryError."""
    import io
    import zipfile

    from deqnca.tasks.maze import generate as mazes

    path = mazes.cache_path(tmp_path, "test", 9, 0)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**9, 11, 11)})
    small = {"generator": "dfs", "version": mazes.GENERATOR_VERSION, "split": "test", "seed": 0, "size": 9,
             "sha256": "0" * 64}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("layouts.npy", header.getvalue() + b"\x00" * 1000)
        for key, value in small.items():
            member = io.BytesIO()
            np.save(member, np.asarray(value))
            z.writestr(f"{key}.npy", member.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layouts = mazes.load_set(9, 4, "test", cache=tmp_path)
    assert np.array_equal(layouts, mazes.generate_set(9, 4, "test"))
    assert any("unreadable maze cache" in str(w.message) for w in caught), [str(w.message) for w in caught]


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)                       # a hole: takes no disk space, reads as zeros
    return path


@pytest.mark.parametrize("case", ["--config", "checkpoint record"])
def test_an_input_file_over_its_size_cap_is_refused_before_it_is_read(tmp_path, capsys, case):
    """cfc3081 read a 100 MB `--config` file or checkpoint record whole before finding it was not JSON;
    now the size is checked first and the message says the cap."""
    if case == "--config":
        argv, code = ["train", "--config", _sparse(tmp_path / "c.json", 100 << 20), "--out", tmp_path / "run"], 2
    else:
        craft(tmp_path, ESSAY, "ck")
        _sparse(tmp_path / "ck.json", 100 << 20)
        argv, code = ["info", tmp_path / "ck"], 1
    rc, err = run(argv, capsys, deadline=FAST)
    assert_error(rc, err, code, "100.0 MiB", "more than the")


CHILD = """
import resource, sys
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))       # a runaway read fails, not the machine
from deqnca.cli import main
try:
    rc = main(sys.argv[3:])
except SystemExit as e:
    rc = e.code
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
open(sys.argv[1], "w").write(str(peak))
sys.exit(rc)
"""


def run_child(argv, tmp_path, data_mb=3000, timeout=120):
    """(exit code, stderr, peak resident MB) of the command line in a fresh process, its heap capped."""
    rss = tmp_path / "maxrss"
    package = Path(deqnca.__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
    env.pop("DEQNCA_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", CHILD, str(rss), str(data_mb), *map(str, argv)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr, (int(rss.read_text()) / 1024 if rss.exists() else None)


@pytest.mark.slow                       # a subprocess, with its heap capped: cfc3081 read /dev/zero until it ran out
def test_a_config_that_is_a_device_is_refused_without_reading_it(tmp_path):
    """cfc3081 read `--config /dev/zero` until memory ran out (past 3 GB; here it stops at the 3 GB cap with
    'out of memory', exit 1)."""
    rc, err, rss = run_child(["train", "--config", "/dev/zero", "--out", tmp_path / "run", "--device", "cpu"], tmp_path)
    assert_error(rc, err, 2, "--config /dev/zero", "a device, not a regular file")
    assert rss < MAX_RSS_MB, f"peak memory {rss:.0f} MB"


def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """An RGBA PNG of `width`×`height` black pixels, written row by row (`rows`: only that many, a truncated
    file), compressed in a stream: a 12,000×12,000 image is about 0.5 MB and never held in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row = zlib.compressobj(9), b"\x00" * (1 + 4 * width)
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.slow                       # a subprocess, to measure its memory
def test_a_huge_target_image_is_refused_from_its_header_in_bounded_memory(tmp_path):
    """cfc3081 decoded a 0.5 MB PNG of 12,000×12,000 pixels whole as a growing target (2.4 GB at its peak)
    before anything refused it (here: as fully transparent, after decoding)."""
    png = _png(tmp_path / "huge.png", 12_000, 12_000)
    assert png.stat().st_size < 1 << 20
    rc, err, rss = run_child(["grow", "train", "--target", png, "--steps", "1", "--out", tmp_path / "run",
                              "--device", "cpu"], tmp_path)
    assert_error(rc, err, 1, "12000×12000", "at most 1024×1024")
    print(f"peak memory {rss:.0f} MB")
    assert rss < MAX_RSS_MB, f"peak memory {rss:.0f} MB"
    assert not (tmp_path / "run").exists()


def test_a_decompression_bomb_header_is_a_one_line_error(tmp_path, capsys):
    """cfc3081: a PNG whose header declares 20,000×20,000 pixels raised PIL's DecompressionBombError, which
    nothing caught: a traceback."""
    png = _png(tmp_path / "bomb.png", 20_000, 20_000, rows=1)
    rc, err = run(["grow", "train", "--target", png, "--steps", "1", "--out", tmp_path / "run", "--device", "cpu"],
                  capsys)
    assert_error(rc, err, 1, "bomb.png", "20000×20000")


# ---- one error boundary, the documented exit codes ----------------------------------------------

def test_an_empty_test_set_is_a_one_line_error(tmp_path, capsys):
    """cfc3081: an IDX test set of zero images reached the evaluation and failed there with a traceback."""
    d = write_split(tmp_path / "data", "test", 0)
    rc, err = run(["eval", ESSAY, "--data-dir", d, "--device", "cpu"], capsys)
    assert_error(rc, err, 1, "t10k-images-idx3-ubyte", "no images")


USAGE = {
    "an unknown solver": ["--set", "solver=nope"],
    "an unknown rule_kw key": ["--set", "rule_kw.bogus=1"],
    "a nested --set key": ["--set", "solver_kw.tol.x=1"],
    "a nested --set value": ["--set", 'solver_kw={"max_iter": {"a": 1}}'],
    "max_iter 0": ["--set", "solver_kw.max_iter=0"],
    "a negative tolerance": ["--set", "solver_kw.tol=-1"],
}


@pytest.mark.parametrize("case", list(USAGE))
def test_a_bad_model_option_is_a_usage_error_before_any_work(tmp_path, capsys, tiny_data, case):
    """cfc3081: an unknown solver or rule_kw key failed after the data was read, with exit code 1; a nested
    `--set` value crashed the first training step with a TypeError traceback; a nested key
    (`solver_kw.tol.x=1`), max_iter 0 and a negative tolerance were accepted and trained."""
    out = tmp_path / "run"
    rc, err = run([*tiny_train(out, tiny_data, 1), *USAGE[case]], capsys)
    assert_error(rc, err, 2)
    assert not out.exists()


def test_a_bad_shard_is_a_usage_error(capsys):
    """cfc3081 checked `--shard 0/0` after loading the checkpoint and exited 1."""
    rc, err = run(["cells", "eval", "cells/article", "--shard", "0/0", "--device", "cpu"], capsys)
    assert_error(rc, err, 2, "--shard", "K/N")


OUT_OF_RANGE = {
    "max_iter 0": (ESSAY, lambda m: m["model_config"]["solver_kw"].update(max_iter=0), "max_iter = 0"),
    "max_iter -3": (ESSAY, lambda m: m["model_config"]["solver_kw"].update(max_iter=-3), "max_iter = -3"),
    "noise_std 1e30": (ESSAY, lambda m: m["model_config"].update(noise_std=1e30), "noise_std"),
    "tol -1": (ESSAY, lambda m: m["model_config"]["solver_kw"].update(tol=-1.0), "tol"),
    "fire_rate 5": (LIZARD, lambda m: m["model_config"].update(fire_rate=5), "fire_rate"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_checkpoint_option_out_of_range_is_refused_on_load(tmp_path, capsys, case):
    """cfc3081 checked only upper bounds of iteration counts and sizes: a checkpoint asking for 0 or −3 solver
    iterations, noise of std 10^30, a negative tolerance or a fire rate of 5 was evaluated or replayed."""
    source, change, words = OUT_OF_RANGE[case]
    ck = craft(tmp_path, source, meta=change)
    out = tmp_path / "out"
    argv = (["grow", "show", ck, "--steps", "2", "--out", out] if source == LIZARD else
            ["eval", ck, "--limit", "2"])
    rc, err = run([*argv, "--device", "cpu"], capsys)
    assert_error(rc, err, 1, words)
    assert not out.exists()


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_info_json_is_strict_json_even_for_a_record_holding_nan(tmp_path, capsys):
    """cfc3081 printed `NaN` and `Infinity` (not JSON) for a run whose record holds them."""
    ck = craft(tmp_path, ESSAY, meta=lambda m: m.update(metrics={"test_acc": float("nan"),
                                                                 "train_loss": float("inf")}))
    rc = main(["info", str(ck), "--json"])
    record = _strict(capsys.readouterr().out)
    assert rc == 0 and record["metrics"] == {"test_acc": None, "train_loss": None}


def test_a_raw_idx_file_and_a_gz_of_different_content_are_refused(tmp_path, capsys):
    """cfc3081 read the raw file and ignored the .gz beside it without a word, whatever the .gz held."""
    d = write_split(tmp_path / "data", "test", 16)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.ones((16, 28, 28)))))
    rc, err = run(["eval", ESSAY, "--data-dir", d, "--limit", "2", "--device", "cpu", "--allow-other-data"], capsys)
    assert_error(rc, err, 1, "t10k-images-idx3-ubyte and ", "t10k-images-idx3-ubyte.gz", "different data")
    # the same content twice is no ambiguity
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress((d / "t10k-images-idx3-ubyte").read_bytes()))
    rc, err = run(["eval", ESSAY, "--data-dir", d, "--limit", "2", "--device", "cpu", "--allow-other-data"], capsys)
    assert rc == 0, err[-2000:]


def test_test_images_of_another_size_than_the_training_images_are_refused(tmp_path, capsys, tiny_data):
    """cfc3081 trained on 28×28 images and evaluated each epoch on 20×20 ones without a word."""
    d = tmp_path / "data"
    write_split(d, "train", 64)
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((16, 20, 20))))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(16)))
    rc, err = run(tiny_train(tmp_path / "run", d, 1), capsys)
    assert_error(rc, err, 1, "20×20", "28×28")
    assert not (tmp_path / "run").exists()


def _library_errors():
    import zipfile

    import safetensors
    from PIL import Image

    return {"safetensors": safetensors.SafetensorError("Error while deserializing header: HeaderTooLarge"),
            "PIL": Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit"),
            "zip": zipfile.BadZipFile("File is not a zip file"),
            "zlib": zlib.error("Error -3 while decompressing data: incorrect header check"),
            "JSON": json.JSONDecodeError("Expecting value", "{", 1)}


@pytest.mark.parametrize("library", ["safetensors", "PIL", "zip", "zlib", "JSON"])
def test_a_library_error_reading_an_input_is_one_line_with_exit_code_1(capsys, monkeypatch, library):
    """cfc3081 let safetensors', PIL's, zipfile's and zlib's own error types (not ValueError or OSError)
    through the error boundary: a traceback. (JSON's already was one line.)"""
    import deqnca.engine.checkpoint as checkpoint

    error = _library_errors()[library]

    def read_checkpoint(*_, **__):
        raise error
    monkeypatch.setattr(checkpoint, "read_checkpoint", read_checkpoint)
    rc, err = run(["info", "mnist-essay"], capsys)
    assert_error(rc, err, 1, str(error).split(":")[0])
