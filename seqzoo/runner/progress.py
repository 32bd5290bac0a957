"""Bars of the runner's device work (``seqzoo.data.progress.Progress``, shared with the data
generators): JAX dispatches steps asynchronously, far ahead of the compute, so a bar advances
as each result completes on the device, not as it is dispatched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from seqzoo.data.dataset import Split
from seqzoo.data.progress import Progress


def completed(results: Sequence[Any], bar: Progress | None) -> Sequence[Any]:
    """``results`` (device values, in dispatch order) once every one is complete; ``bar``
    advances by one as each completes."""
    for result in results:
        jax.block_until_ready(result)
        if bar is not None:
            bar.update()
    return results


def eval_bar(split: Split, batch_size: int, name: str) -> Progress:
    """The (transient) bar of an evaluation of ``split`` in batches of ``batch_size``."""
    batches = -(-len(split["inputs"]) // batch_size)
    return Progress(batches, f"eval {name} (batches)", transient=True)
