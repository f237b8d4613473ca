"""Files that are never torn: write to a temporary file, flush it to disk, rename it into place."""
from __future__ import annotations

import fnmatch
import os
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
