"""Files that are never torn, and reads that are bounded.

Writes go to a temporary file beside the destination, are flushed to disk and renamed into place: never a
torn file, and a symbolic link where the file goes is replaced by the file, never followed (so an output
cannot overwrite what a link points at). Reads of inputs (`read_bytes_bounded`, `read_json_bounded`) take
regular files only, checked before opening (a FIFO or a device would hang or never end), and refuse a file
over a size cap before reading any of it.
"""
from __future__ import annotations

import fnmatch
import json
import os
import stat
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where the platform refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, flush it to disk, then rename it over `path`
    (never a torn file, and the rename is durable once this returns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as e:        # a full disk: name the file being written, not the temporary one
            if e.errno is None:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; checkpoints are ordinary files
        fault_point("before-rename", path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_write` (a link in the way is replaced, not followed)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Path(path)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` through `atomic_write` (a link in the way is replaced, not followed)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


class InputError(ValueError):
    """An input file that is not a regular file, is too large, or does not parse (a one-line message)."""


def check_regular_file(path, what: str = "") -> os.stat_result:
    """`os.stat(path)` of a regular file (a link to one counts); a one-line `InputError` for a FIFO, a
    device, a socket or a folder, and `FileNotFoundError` for a missing file. Nothing is opened, so a FIFO
    cannot block."""
    path = Path(path)
    st = os.stat(path)              # FileNotFoundError (an OSError with the file name) when missing
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{(what + ' ') if what else ''}{path}: {kind}, not a regular file")
    return st


def _size_text(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_bytes_bounded(path, cap: int, what: str = "") -> bytes:
    """The bytes of regular file `path`, refused in one line (`InputError`) when it is not a regular file
    or holds more than `cap` bytes (checked before reading, and again while reading, for a file that
    grows). The file is opened without following it into a FIFO's wait (O_NONBLOCK)."""
    path = Path(path)
    where = f"{(what + ' ') if what else ''}{path}"
    st = check_regular_file(path, what)
    if st.st_size > cap:
        raise InputError(f"{where}: {_size_text(st.st_size)}, more than the {_size_text(cap)} such a file may hold")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):       # swapped for something else meanwhile
            raise InputError(f"{where}: not a regular file")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise InputError(f"{where}: more than the {_size_text(cap)} such a file may hold")
    return data


MAX_JSON_BYTES = 64 << 20      # a config file or checkpoint record (the largest shipped record: a few hundred KB)


def read_json_bounded(path, cap: int = MAX_JSON_BYTES, what: str = ""):
    """The JSON value in regular file `path` (at most `cap` bytes); one-line `InputError`s for a file that
    is not regular, too large, not UTF-8, not JSON or nested too deeply. NaN and Infinity are accepted
    (Python's json writes them); see `strict_json` for writing."""
    data = read_bytes_bounded(path, cap, what)
    where = f"{(what + ' ') if what else ''}{path}"
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{where}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None


def finite_or_null(value):
    """`value` with every float that is NaN or infinite replaced by None (in nested dicts, lists, tuples)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value, **kw) -> str:
    """`json.dumps` that never writes NaN or Infinity (not JSON): non-finite floats become null."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kw)


def fault_point(where: str, path: Path) -> None:
    """Test hook, inert outside the test suite: with DEQNCA_TEST_FAULT="<where>:<file name>[:<n>]" (the file
    name may be a glob pattern, e.g. `last.[0-9a-f]*.safetensors`, or `*`) *and* PYTEST_CURRENT_TEST set (by
    pytest, for the test it runs; the variable passes to the commands a test starts), the process dies
    (SIGKILL) the n-th time (default 1st) it reaches `where` for that file, so tests can kill a run inside
    a checkpoint write. Without both variables it does nothing."""
    spec = os.environ.get("DEQNCA_TEST_FAULT")
    if not spec or not os.environ.get("PYTEST_CURRENT_TEST"):
        return
    parts = spec.split(":")
    if parts[0] != where or (len(parts) > 1 and not fnmatch.fnmatchcase(Path(path).name, parts[1])):
        return
    count = int(os.environ.get("_DEQNCA_TEST_FAULT_SEEN", "0")) + 1
    os.environ["_DEQNCA_TEST_FAULT_SEEN"] = str(count)
    if count >= (int(parts[2]) if len(parts) > 2 else 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
