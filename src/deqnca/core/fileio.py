"""Files that are never torn: write to a temporary file, flush it to disk, rename it into place."""
from __future__ import annotations

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
    """Test hook: with DEQNCA_FAULT="<where>:<file name>[:<n>]" the process dies (SIGKILL) the n-th time
    (default 1st) it reaches `where` for that file, so tests can kill a run inside a checkpoint write."""
    spec = os.environ.get("DEQNCA_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != where or (len(parts) > 1 and parts[1] not in (Path(path).name, "*")):
        return
    count = int(os.environ.get("_DEQNCA_FAULT_SEEN", "0")) + 1
    os.environ["_DEQNCA_FAULT_SEEN"] = str(count)
    if count >= (int(parts[2]) if len(parts) > 2 else 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


