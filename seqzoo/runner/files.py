"""Run-directory files that survive a kill at any moment.

* ``write_atomic``: a file is replaced whole or not at all (temporary file, fsync, rename,
  fsync of the folder), so a reader sees the old or the new content, never a mix;
* ``append_line``: one line appended and flushed to disk; a kill can tear only this line;
* ``read_jsonl``: the records of a JSON-lines file, dropping a torn last line with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Replace ``path`` by ``text`` (or bytes): written to ``.<name>.tmp`` beside it, synced,
    renamed.

    Only one process may write a given path at a time (the run lock ensures it), so the
    temporary name is fixed: a temporary file left by a killed writer is simply overwritten.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


class TornLineWarning(UserWarning):
    """A JSON-lines file ended in an incomplete record (its writer was killed mid-line)."""


def _torn(path: Path, line: str, number: int) -> None:
    warnings.warn(
        f"{path}: dropped its last line {number}, an incomplete record (the run was killed "
        f"while writing it): {line[:80]!r}",
        TornLineWarning,
        stacklevel=3,
    )


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created if absent), synced to disk. A torn
    last line (no newline at the end of the file) is cut off first, with a warning. Meant for
    short logs: the file is read whole."""
    path = Path(path)
    with path.open("a+b") as f:  # appends go to the end whatever the position
        f.seek(0)
        data = f.read()
        if data and not data.endswith(b"\n"):
            kept = data.rfind(b"\n") + 1
            _torn(path, data[kept:].decode(errors="replace"), data.count(b"\n") + 1)
            f.truncate(kept)
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of ``path``, one per line, in order.

    A last line that is not valid JSON is what a writer killed mid-append leaves: it is dropped
    with a ``TornLineWarning`` naming the file. Any earlier bad line means the file was damaged
    otherwise: ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                _torn(path, line, number)
                break
            raise ValueError(
                f"{path} line {number} is not a JSON record ({e}): {line[:80]!r}"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: {line[:80]!r}")
        records.append(record)
    return records
