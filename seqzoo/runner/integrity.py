"""Checks of parameter trees: which leaves hold NaN or infinity, and checksums of a checkpoint's
content (the bytes of its arrays, its JSON metadata), to tell a checkpoint that reads back whole
from one whose files were cut short or altered."""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.runner.distributed import host_values


@jax.jit
def _finite_leaves(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


def nonfinite_leaves(tree: Any) -> list[str]:
    """The paths (``jax.tree_util.keystr``) of the leaves of ``tree`` holding NaN or inf, in
    tree order; computed where the arrays live, only the flags are fetched."""
    flags = jax.device_get(_finite_leaves(tree))
    flat, _ = jax.tree_util.tree_flatten_with_path(flags)
    return [jax.tree_util.keystr(path) for path, finite in flat if not finite]


def array_checksum(tree: Any) -> str:
    """CRC-32 (8 hex digits) of the leaves of ``tree``: dtype, shape and bytes of each, in tree
    order (the arrays are fetched to the host: gathered from every process, so the checksum of a
    checkpoint does not depend on how many processes saved it)."""
    crc = 0
    for leaf in jax.tree.leaves(host_values(tree)):
        array = np.ascontiguousarray(leaf)
        crc = zlib.crc32(f"{array.dtype.name}{array.shape}".encode(), crc)
        crc = zlib.crc32(array.reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def json_checksum(value: Any) -> str:
    """CRC-32 (8 hex digits) of ``value`` written as JSON with sorted keys."""
    return f"{zlib.crc32(json.dumps(value, sort_keys=True).encode()):08x}"
