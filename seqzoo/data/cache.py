"""On-disk cache of generated splits: one ``.npz`` per parameter set.

The file name encodes the task name and every generation parameter, so changing any
parameter builds a new file; writes are atomic (temp file + rename), so concurrent
processes never read a half-written cache. Integer arrays are stored in the smallest dtype
that holds them and all-valid masks are left out; loading restores the house dtypes. Files
are read without unpickling; a cache file that does not read back (damaged, or not written
by this module) is rebuilt, with a warning naming it.
"""

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from seqzoo.data.dataset import Split, make_split

DEFAULT_CACHE_DIR = "~/.cache/seqzoo"
FORMAT_VERSION = 1  # bump when a generator's output changes, so old caches are not read
_MAX_NAME = 200


def cache_file_name(name: str, params: Mapping[str, object]) -> str:
    """``name-v<FORMAT_VERSION>-k1=v1-k2=v2.npz``; a digest replaces the tail of over-long
    names."""
    parts = [name, f"v{FORMAT_VERSION}"] + [f"{k}={_fmt(v)}" for k, v in params.items()]
    stem = "-".join(parts)
    if len(stem) > _MAX_NAME:
        digest = hashlib.sha1(stem.encode()).hexdigest()[:16]
        stem = f"{stem[:_MAX_NAME - 17]}-{digest}"
    return f"{stem}.npz"


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value).replace(os.sep, "_").replace(" ", "")


def cached_splits(
    name: str,
    params: Mapping[str, object],
    build: Callable[[], dict[str, Split]],
    cache_dir: str | os.PathLike | None,
) -> dict[str, Split]:
    """Loads the splits from ``cache_dir`` if cached, else builds and saves them.

    ``cache_dir=None`` disables caching (always builds, writes nothing).
    """
    if cache_dir is None:
        return build()
    directory = Path(cache_dir).expanduser()
    path = directory / cache_file_name(name, params)
    if path.exists():
        stored = _read(path)
        if stored is not None:
            return stored
    splits = build()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **_flatten(splits))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return splits


def _read(path: Path) -> dict[str, Split] | None:
    """The splits stored in cache file ``path``, or None (with a warning naming it) when it
    does not read back whole."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return _unflatten({key: stored[key] for key in stored.files})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"the cached data {path} does not read back ({type(err).__name__}: "
                      f"{err}); building it again", stacklevel=3)
        return None


def _flatten(splits: dict[str, Split]) -> dict[str, np.ndarray]:
    flat = {}
    for split, arrays in splits.items():
        for field, array in arrays.items():
            if not (field == "mask" and array.all()):
                flat[f"{split}.{field}"] = _compact(array)
    return flat


def _compact(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "iu" or array.size == 0:
        return array
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        if info.min <= array.min() and array.max() <= info.max:
            return array.astype(dtype)
    return array


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Split]:
    fields: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        split, field = key.rsplit(".", 1)
        fields.setdefault(split, {})[field] = array
    return {split: make_split(f["inputs"], f["targets"], f.get("mask")) for split, f in
            fields.items()}
