"""On-disk cache of generated data: one ``.npz`` per parameter set.

The cache lives in ``$SEQZOO_CACHE``, else ``~/.cache/seqzoo`` (:func:`resolve_cache_dir`).
The file name encodes the task name and every generation parameter, so changing any
parameter builds a new file; generators that build their splits one by one
(``generate_listops``, ``generate_pathfinder``) store each split in its own file, keyed by
what that split depends on, so changing one split's size keeps the others. Writes are atomic
(temp file + rename), so concurrent processes never read a half-written cache. Integer arrays
are stored in the smallest dtype that holds them, all-valid masks are left out and
right-padding masks are stored as lengths; loading restores the house dtypes. Files are read
without unpickling; a cache file that does not read back (damaged, or not written by this
module) is rebuilt, with a warning naming it.
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

CACHE_ENV = "SEQZOO_CACHE"
FALLBACK_CACHE_DIR = "~/.cache/seqzoo"
DEFAULT_CACHE_DIR = f"${CACHE_ENV}"  # a cache_dir value: $SEQZOO_CACHE, else the fallback
FORMAT_VERSION = 2  # bump when a generator's output or the file layout changes
_MAX_NAME = 200

CacheDir = str | os.PathLike | None


def resolve_cache_dir(cache_dir: CacheDir) -> Path | None:
    """The directory ``cache_dir`` names: ``DEFAULT_CACHE_DIR`` is ``$SEQZOO_CACHE`` when set
    (and not empty), else ``~/.cache/seqzoo``; None (no caching) stays None."""
    if cache_dir is None:
        return None
    if cache_dir == DEFAULT_CACHE_DIR:
        cache_dir = os.environ.get(CACHE_ENV) or FALLBACK_CACHE_DIR
    return Path(cache_dir).expanduser()


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


def cached_arrays(
    name: str,
    params: Mapping[str, object],
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: CacheDir,
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, read from the cache file of ``name`` and ``params`` in
    ``cache_dir`` (see :func:`resolve_cache_dir`) if there, else built and saved there.

    ``cache_dir=None`` disables caching (always builds, writes nothing). Arrays are stored as
    given: compact them first (:func:`compact_split`).
    """
    directory = resolve_cache_dir(cache_dir)
    if directory is None:
        return build()
    path = directory / cache_file_name(name, params)
    if path.exists():
        stored = _read(path)
        if stored is not None:
            return stored
    arrays = build()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it: a shared cache stays shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays


def cached_splits(
    name: str,
    params: Mapping[str, object],
    build: Callable[[], dict[str, Split]],
    cache_dir: CacheDir,
) -> dict[str, Split]:
    """The splits ``build()`` returns, cached in one file as :func:`cached_arrays` does."""
    flat = cached_arrays(name, params, lambda: _flatten(build()), cache_dir)
    fields: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        split, field = key.rsplit(".", 1)
        fields.setdefault(split, {})[field] = array
    return {split: restore_split(arrays) for split, arrays in fields.items()}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored in cache file ``path``, or None (with a warning naming it) when it
    does not read back whole."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"the cached data {path} does not read back ({type(err).__name__}: "
                      f"{err}); building it again", stacklevel=3)
        return None


def _flatten(splits: dict[str, Split]) -> dict[str, np.ndarray]:
    return {f"{split}.{field}": array for split, arrays in splits.items()
            for field, array in compact_split(arrays).items()}


def compact_split(split: Split) -> dict[str, np.ndarray]:
    """``split``'s arrays as stored: integers in the smallest dtype that holds them; the mask
    left out when all valid, or as ``lengths`` (n,) when each row is valid up to a length."""
    arrays = {field: _compact(array) for field, array in split.items() if field != "mask"}
    mask = split["mask"]
    if not mask.all():
        lengths = mask.sum(axis=1)
        if np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]):
            arrays["lengths"] = _compact(lengths)
        else:
            arrays["mask"] = mask
    return arrays


def restore_split(arrays: Mapping[str, np.ndarray]) -> Split:
    """The split :func:`compact_split` stored as ``arrays``, in the house dtypes."""
    mask = arrays.get("mask")
    if "lengths" in arrays:
        mask = np.arange(arrays["inputs"].shape[1]) < arrays["lengths"][:, None]
    return make_split(arrays["inputs"], arrays["targets"], mask)


def _compact(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "iu" or array.size == 0:
        return array
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        if info.min <= array.min() and array.max() <= info.max:
            return array.astype(dtype)
    return array
