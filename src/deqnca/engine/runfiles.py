"""The run folder's own files: the lock that makes one run the folder's only writer, and the manifest of the
files deqnca writes there, so that checkpoint clean-up, `--overwrite` and the removal of what a kill left
behind delete those files and nothing else (docs/guarantees.md).

- `.deqnca.lock`: held (an OS lock through `filelock`, released by the kernel when the process dies) from
  before the folder's checks to the end of the run; a second run into the folder is refused (exit 2).
  The file itself stays (removing a lock file others may have open would let two runs hold it).
- `.deqnca-files.json`: the manifest, written atomically when a run starts and again *before* each new
  tensor file is renamed into place, so a file a kill leaves is always one the manifest lists. It also
  names the process that holds the lock, for the message a refused run prints.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from deqnca.core.configs import ConfigError
from deqnca.core.fileio import atomic_write

LOCK = ".deqnca.lock"
MANIFEST = ".deqnca-files.json"
STAGING = "last.staging.safetensors"
# the names every run writes: deqnca's even in a folder without a manifest (a run of an older deqnca)
FIXED = ("config.json", "metrics.jsonl", "last.json", STAGING, MANIFEST)
TENSOR_FILE = re.compile(r"last\.[0-9a-f]{16}\.safetensors")        # a run checkpoint's tensors, by content
# `atomic_write`'s temporary files (tempfile.mkstemp): ".<name>.<8 random characters>.tmp"
TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


class FolderBusy(ConfigError):
    """Another process holds the run folder's lock (a usage error: exit code 2)."""


@contextmanager
def locked(folder: Path):
    """Hold `folder`'s lock (creating the folder) until the block ends; `FolderBusy` if another process holds
    it. Taken without waiting: checking the folder and claiming it are then one step."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(f"{folder} is in use: another deqnca run{RunFiles(folder).holder()} holds its lock "
                         f"{folder / LOCK}; wait for that run to end, or choose another --out") from None
    try:
        yield
    finally:
        lock.release()


def _plain(name) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


class RunFiles:
    """The files deqnca wrote in run folder `folder` (main process)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files: set[str] = set()
        self.started = ""

    def listed(self) -> set[str]:
        """The names the manifest lists (none when it is missing or unreadable)."""
        names = _json(self.folder / MANIFEST).get("files")
        return {n for n in names if _plain(n)} if isinstance(names, list) else set()

    def checkpoint_tensors(self) -> str | None:
        """The tensor file `last.json` names (None without a readable one)."""
        name = _json(self.folder / "last.json").get("weights_file")
        return name if _plain(name) else None

    def holder(self) -> str:
        """The lock holder as the manifest records it, " (process N on HOST, started T)", or "" where that
        record is missing or names a process that has ended."""
        who = _json(self.folder / MANIFEST).get("holder")
        if not isinstance(who, dict) or not isinstance(who.get("pid"), int) or who["pid"] <= 0:
            return ""
        if who.get("host") == socket.gethostname():
            try:
                os.kill(who["pid"], 0)
            except ProcessLookupError:
                return ""           # an earlier run's record; the holder has not written its own yet
            except OSError:
                pass
        return f" (process {who['pid']} on {who.get('host')}, started {who.get('started')})"

    def tensor_files(self) -> list[str]:
        """The checkpoint tensor files present: content-addressed names and those the manifest lists."""
        if not self.folder.is_dir():
            return []
        listed = {n for n in self.listed() if n.endswith(".safetensors") and n != STAGING}
        return sorted(f.name for f in self.folder.iterdir()
                      if f.name != STAGING and (TENSOR_FILE.fullmatch(f.name) or f.name in listed))

    def strays(self) -> list[str]:
        """What a kill left: temporary files of deqnca's files, the staging tensor file, and tensor files the
        manifest lists that the checkpoint does not name."""
        own, current = set(FIXED) | self.listed(), self.checkpoint_tensors()
        found = []
        for f in self.folder.iterdir():
            temporary = TEMPORARY.fullmatch(f.name)
            if (temporary and temporary["name"] in own) or f.name == STAGING:
                found.append(f.name)
            elif current and f.name in own and TENSOR_FILE.fullmatch(f.name) and f.name != current:
                found.append(f.name)
        return sorted(found)

    def remove_run(self) -> None:
        """`--overwrite`: delete the run's files — the fixed names, the manifest's, the checkpoint's tensor
        file — and what a kill left; the lock and every other file stay."""
        names = (set(FIXED) | self.listed() | set(self.strays())) - {LOCK}
        current = self.checkpoint_tensors()
        if current and TENSOR_FILE.fullmatch(current):
            names.add(current)
        for name in sorted(names):
            if (self.folder / name).is_file() or (self.folder / name).is_symlink():
                (self.folder / name).unlink()

    def start(self) -> None:
        """A run starts writing (its lock held, its checks passed): remove what a kill left, then write the
        manifest: the fixed names, the lock and the checkpoint's tensor file."""
        for name in self.strays():
            (self.folder / name).unlink(missing_ok=True)
        current, self.started = self.checkpoint_tensors(), time.strftime("%Y-%m-%d %H:%M:%S")
        self.files = set(FIXED) | {LOCK} | ({current} if current else set())
        self._write()

    def claim(self, name: str) -> None:
        """Record `name` before it is created (so a kill right after leaves a file the manifest lists);
        names of files gone since are dropped."""
        if name in self.files:
            return
        known = self.files or set(FIXED) | {LOCK} | self.listed()
        self.files = {n for n in known if n in FIXED or n == LOCK or (self.folder / n).exists()} | {name}
        self._write()

    def _write(self) -> None:
        record = {"about": "the files deqnca wrote in this run folder: clean-up and --overwrite delete only these",
                  "files": sorted(self.files),
                  "holder": {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started}}
        atomic_write(self.folder / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
