"""The lock of a run directory: one process at a time trains, resumes or rewrites a run.

``RUN_DIR/lock`` holds a JSON line ``{"pid", "host", "command", "since"}`` of its owner and an
exclusive ``flock`` of the owner's open file. The kernel releases the flock when the owner
exits, however it ends, so a lock left by a killed process (a dead pid) is stale and the next
process takes it over; a live owner's lock is refused with its pid. The file is removed on
release.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "lock"


class RunDirLocked(FileExistsError):
    """Another live process holds the lock of the run directory."""


def _describe(owner: dict) -> str:
    """``process PID (COMMAND, since TIME[, on HOST])`` of an owner record."""
    if "pid" not in owner:
        return "another process"
    details = [owner.get("command"), owner.get("since") and f"since {owner['since']}"]
    if owner.get("host") not in (None, socket.gethostname()):
        details.append(f"on {owner['host']}")
    details = [d for d in details if d]
    return f"process {owner['pid']}" + (f" ({', '.join(details)})" if details else "")


def _read_owner(path: Path) -> dict:
    """The owner record in ``path`` ({} if unreadable: a writer killed before writing it)."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """``with RunLock(run_dir, log):`` holds the lock of ``run_dir`` (an existing folder).

    Raises ``RunDirLocked`` naming the owner's pid if a live process holds it; ``log`` gets a
    line when a stale lock (its owner gone) is taken over.
    """

    def __init__(self, run_dir: str | Path, log=print):
        self.path = Path(run_dir) / LOCK_FILE
        self.log = log
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ValueError(
                    f"cannot write in run directory {self.path.parent}: {e.strerror}; choose "
                    f"another with --run-dir"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = _read_owner(self.path)
                raise RunDirLocked(
                    f"run directory {self.path.parent} is in use by {_describe(owner)}; wait "
                    f"for it to finish or stop it (its lock: {self.path})"
                ) from None
            if not _same_file(fd, self.path):  # released and removed meanwhile: take the new one
                os.close(fd)
                continue
            self.fd = fd
        stale = _read_owner(self.path)
        if stale:
            self.log(f"took over the lock of {self.path.parent} left by {_describe(stale)}, "
                     f"which is no longer running")
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while held: no one else can have locked this file
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
