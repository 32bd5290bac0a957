"""Finding and reading the user's copies of released data files, with errors that say what
goes where and which file (and line) is damaged."""

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def missing(what: str, directory: Path, expected: list[str]) -> FileNotFoundError:
    """The error for data that is not where it should be, listing the expected files."""
    listing = "\n  ".join(expected)
    return FileNotFoundError(
        f"{what} not found in {directory}. Expected these files there:\n  {listing}\n"
        f"Download the released files and pass the directory that holds them.")


def find(directory: Path, name: str, what: str, expected: list[str]) -> Path:
    """``directory / name``, or its ``.gz`` twin; else the :func:`missing` error."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise missing(what, directory, expected)


def open_maybe_gzip(path: Path) -> BinaryIO:
    """Opens ``path`` for binary reading, decompressing ``.gz`` files."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@contextlib.contextmanager
def gzip_errors_named(path: Path) -> Iterator[None]:
    """Turns the errors of reading a damaged ``.gz`` file inside the block (not gzip, truncated,
    corrupt) into a ValueError naming ``path``."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err}); it is truncated or "
                         f"damaged: download it again, or store it uncompressed without "
                         f"the .gz suffix") from None


def read_bytes(path: Path) -> bytes:
    """The whole content of ``path``, decompressed if it ends in ``.gz``."""
    with gzip_errors_named(path), open_maybe_gzip(path) as handle:
        return handle.read()


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its ending) for each line of UTF-8 text file ``path``
    (decompressed if ``.gz``); a line that is not UTF-8 is a ValueError naming file and line."""
    with gzip_errors_named(path), open_maybe_gzip(path) as handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number} is not UTF-8 text ({err.reason} at byte "
                                 f"{err.start} of the line)") from None
            yield number, text.rstrip("\r\n")
