"""The model a config asks for, and the statistics its loss and accuracy are made of.

loss = sum of cross-entropies / count,  accuracy = correct / count,  over targets != -100
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from seqzoo.config import ExperimentConfig
from seqzoo.data import IGNORE_INDEX, Dataset
from seqzoo.models import SequenceModel

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def per_position(data: Dataset) -> bool:
    """True when the task labels every position (targets (n, length)), else one label a row."""
    return data["train"]["targets"].ndim == 2


def build_model(cfg: ExperimentConfig, data: Dataset) -> SequenceModel:
    """The ``SequenceModel`` of ``cfg.model`` with the input and head ``data`` needs."""
    m = cfg.model
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {m.dtype!r}")
    mixers = tuple(m.mixer.split(",")) if "," in m.mixer else m.mixer
    label = per_position(data)
    return SequenceModel(
        d_model=m.d_model,
        n_layers=m.n_layers,
        mixer=mixers,
        mixer_config=m.mixer_options,
        bidirectional=m.bidirectional,
        vocab_size=data.vocab_size,
        input_dim=None if data.vocab_size else 1,
        head="lm" if label else "classify",
        num_classes=None if label else data.num_classes,
        output_dim=data.num_classes if label else None,
        max_length=m.max_length or None,
        mlp=m.mlp,
        mlp_ratio=m.mlp_ratio,
        norm=m.norm,
        dropout=m.dropout,
        dtype=DTYPES[m.dtype],
    )


def model_inputs(batch: dict[str, jax.Array]) -> jax.Array:
    """Token ids as they are; float inputs ``(batch, length)`` get a feature axis."""
    x = batch["inputs"]
    return x[..., None] if jnp.issubdtype(x.dtype, jnp.floating) else x


def token_stats(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Sums over targets != -100: ``{"ce", "correct", "count"}`` (float32 scalars).

    ``logits: (batch, [length,] classes)``, ``targets: (batch, [length])``.
    """
    valid = targets != IGNORE_INDEX
    safe = jnp.where(valid, targets, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    correct = (jnp.argmax(logits, -1) == safe) & valid
    return {
        "ce": jnp.sum(jnp.where(valid, ce, 0.0)),
        "correct": jnp.sum(correct, dtype=jnp.float32),
        "count": jnp.sum(valid, dtype=jnp.float32),
    }


def loss_and_accuracy(stats: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy from summed ``token_stats``."""
    n = jnp.maximum(stats["count"], 1.0)
    return stats["ce"] / n, stats["correct"] / n
