"""The container every seqzoo data task returns.

A split is a plain dict of numpy arrays:

* ``inputs``  (n, l) int32 tokens, or float32 for pixel / continuous inputs;
* ``targets`` (n,) int32 class ids for classification, or (n, l) int32 per-position labels
  for sequence labelling, with ``IGNORE_INDEX`` (-100) where there is no label;
* ``mask``    (n, l) bool, True at valid (non-padding) positions.
"""

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
PAD_ID = 0
SPLIT_FIELDS = ("inputs", "targets", "mask")

Split = dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    """Named splits plus the task metadata a model needs.

    ``vocab_size`` is the number of input token ids (None for float inputs), ``num_classes``
    the number of target ids, ``seq_len`` the padded input length, ``pad_id`` the id used
    for padding (always 0; the mask, not the id, is authoritative).
    """

    name: str
    splits: dict[str, Split]
    vocab_size: int | None
    num_classes: int
    seq_len: int
    pad_id: int = PAD_ID

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"{self.name} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]


def make_split(inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> Split:
    """Checks shapes, casts to the house dtypes, and fills an all-valid mask when None."""
    inputs = np.asarray(inputs)
    inputs = inputs.astype(np.float32 if inputs.dtype.kind == "f" else np.int32, copy=False)
    targets = np.asarray(targets, dtype=np.int32)
    mask = np.ones(inputs.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if inputs.ndim != 2 or mask.shape != inputs.shape:
        raise ValueError(f"inputs and mask must share a (n, l) shape, got {inputs.shape}, "
                         f"{mask.shape}")
    if targets.shape not in (inputs.shape[:1], inputs.shape):
        raise ValueError(f"targets must be (n,) or (n, l) for inputs {inputs.shape}, "
                         f"got {targets.shape}")
    return {"inputs": inputs, "targets": targets, "mask": mask}


def pack_sequences(sequences: list, labels: list[int], seq_len: int) -> Split:
    """A classification split from variable-length token sequences (lists of ids, arrays or
    ``bytes`` of uint8 ids), truncated or padded with ``PAD_ID`` to ``seq_len`` (>= 1)."""
    if seq_len < 1:
        raise ValueError(f"sequences need a length of at least 1, got seq_len={seq_len}")
    inputs = np.full((len(sequences), seq_len), PAD_ID, np.int32)
    mask = np.zeros((len(sequences), seq_len), bool)
    for row, sequence in enumerate(sequences):
        ids = np.frombuffer(sequence, np.uint8) if isinstance(sequence, bytes) else sequence
        length = min(len(ids), seq_len)
        inputs[row, :length] = ids[:length]
        mask[row, :length] = True
    return make_split(inputs, np.asarray(labels, np.int32), mask)
