"""``SequenceModel``: embedding or input projection, N residual blocks, final norm, a head.

h_0 = embed(tokens) or x W_in            (+ learned positions if asked)
h_n = block_n(h_{n-1}, mask)             n = 1..N, mixer chosen by registry name
classify: logits = W_out pool(norm(h_N))  (masked mean or last valid token)
lm:       logits = W_out norm(h_N)        (per position; recurrent ``step`` for decoding)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.models.blocks import ResidualBlock
from seqzoo.models.norms import apply_norm, make_norm
from seqzoo.ops.attention import valid_positions
from seqzoo.parallel.context import sequence_axis
from seqzoo.parallel.pooling import sequence_sum, sharded_last_valid
from seqzoo.registry import mixer_info

Array = jax.Array
HEADS = ("classify", "lm", "none")
POOLINGS = ("mean", "last")


def masked_mean(h: Array, mask: Array) -> Array:
    """Mean of ``h: (batch, length, d)`` over valid positions ``mask: (batch, length)``."""
    w = mask.astype(jnp.float32)[..., None]
    return sequence_sum(h.astype(jnp.float32) * w) / jnp.maximum(sequence_sum(w), 1.0)


def last_valid(h: Array, mask: Array) -> Array:
    """``h`` at the last valid position of each row: ``(batch, d)``."""
    axis = sequence_axis()
    if axis is not None:  # sequence parallel: the last valid position may be on another shard
        return sharded_last_valid(h, mask, axis)
    idx = jnp.maximum(jnp.max(jnp.where(mask, jnp.arange(mask.shape[1]), -1), axis=1), 0)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]


def layer_mixers(mixer: str | tuple[str, ...], n_layers: int, bidirectional: bool) -> list[str]:
    """The registry name of each layer's mixer: ``mixer``, or the names of a hybrid used
    cyclically; with ``bidirectional``, causal mixers are wrapped (``bi:<name>``)."""
    names = (mixer,) if isinstance(mixer, str) else tuple(mixer)
    out = [names[i % len(names)] for i in range(n_layers)]
    if bidirectional:
        out = [f"bi:{n}" if mixer_info(n).causal else n for n in out]
    return out


def mixer_options(config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Options of mixer ``name`` (a ``bi:`` prefix ignored): ``config`` itself, or its entry for
    that name when ``config`` maps mixer names to option dicts (``{}`` if it has none).

    Raises ``ValueError`` for a ``config`` that mixes both (its plain options would be lost).
    """
    config = dict(config or {})
    tables = sorted(k for k, v in config.items() if isinstance(v, Mapping))
    if not tables:
        return config
    plain = sorted(set(config) - set(tables))
    if plain:
        raise ValueError(
            f"mixer options are either one set for every mixer or one table per mixer name, not "
            f"both: options {plain} beside tables for {tables}; move {plain} into the tables"
        )
    return dict(config.get(name.removeprefix("bi:"), {}))


class SequenceModel(nn.Module):
    """A stack of residual blocks around registry mixers.

    Attributes:
      d_model, n_layers: width and depth.
      mixer: a registry name, or a tuple of names used cyclically over layers (a hybrid, e.g.
        ``("mamba", "mamba", "mamba", "attention")``).
      mixer_config: options per mixer name, ``{"attention": {"num_heads": 4}}``, or one dict of
        options for a single mixer.
      bidirectional: wrap causal mixers in ``Bidirectional`` (for classification of whole inputs).
      vocab_size: token inputs ``(batch, length)`` int; else ``input_dim``: features
        ``(batch, length, input_dim)`` float.
      head: ``classify`` (``num_classes`` logits per sequence, ``pooling`` mean | last),
        ``lm`` (``output_dim or vocab_size`` logits per position) or ``none`` (hidden states).
      max_length: learned absolute position embeddings of this size (None: none).
      mlp, mlp_ratio, norm, dropout: passed to every ``ResidualBlock`` (``norm``: rms | layer |
        batch, also the final norm; batch norm's running averages are the ``batch_stats``
        collection, updated when applied with ``deterministic=False, mutable=["batch_stats"]``).
      dtype: compute dtype (parameters stay float32), the lm head's matmul included: its
        logits are rounded to ``dtype`` and returned as float32 (torch autocast's and MaxText's
        bf16 logits; in a 125M-parameter model with a 50k vocabulary the head is about a third
        of the training FLOPs). The classifier head computes in float32.
    """

    d_model: int
    n_layers: int
    mixer: str | tuple[str, ...]
    mixer_config: dict[str, Any] | None = None
    bidirectional: bool = False
    vocab_size: int | None = None
    input_dim: int | None = None
    head: str = "classify"
    num_classes: int | None = None
    output_dim: int | None = None
    pooling: str = "mean"
    max_length: int | None = None
    mlp: str = "glu"
    mlp_ratio: float = 4.0
    norm: str = "rms"
    dropout: float = 0.0
    dtype: Any = None

    def layer_mixers(self) -> list[str]:
        """The registry name of each layer's mixer (see ``layer_mixers``)."""
        return layer_mixers(self.mixer, self.n_layers, self.bidirectional)

    def _config_for(self, name: str) -> dict[str, Any]:
        """Options of mixer ``name`` (see ``mixer_options``)."""
        return mixer_options(self.mixer_config, name)

    def setup(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if (self.vocab_size is None) == (self.input_dim is None):
            raise ValueError("give exactly one of vocab_size (tokens) and input_dim (features)")
        if self.head == "classify" and not self.num_classes:
            raise ValueError("head='classify' needs num_classes")
        if self.vocab_size is not None:
            self.embed = nn.Embed(self.vocab_size, self.d_model, param_dtype=jnp.float32)
        else:
            self.embed = nn.Dense(self.d_model, param_dtype=jnp.float32, dtype=self.dtype)
        if self.max_length is not None:
            self.pos = self.param(
                "pos_embedding",
                nn.initializers.normal(0.02),
                (self.max_length, self.d_model),
                jnp.float32,
            )
        self.blocks = [
            ResidualBlock(
                self.d_model,
                name,
                self._config_for(name),
                self.mlp,
                self.mlp_ratio,
                self.norm,
                self.dropout,
                self.dtype,
                name=f"block_{i}",
            )
            for i, name in enumerate(self.layer_mixers())
        ]
        self.final_norm = make_norm(self.norm, "final_norm")
        self.drop = nn.Dropout(self.dropout)
        if self.head == "classify":
            self.out = nn.Dense(self.num_classes, param_dtype=jnp.float32, name="classifier")
        elif self.head == "lm":
            out_dim = self.output_dim or self.vocab_size
            if out_dim is None:
                raise ValueError("head='lm' needs output_dim (or vocab_size)")
            self.out = nn.Dense(out_dim, param_dtype=jnp.float32, dtype=self.dtype,
                                name="lm_head")

    def _check(self, inputs: Array, mask: Array | None) -> Array:
        token_input = self.vocab_size is not None
        want = 2 if token_input else 3
        if inputs.ndim != want:
            kind = "(batch, length) token ids" if token_input else "(batch, length, input_dim)"
            raise ValueError(f"inputs must be {kind}, got shape {inputs.shape}")
        if not token_input and inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs' last dim {inputs.shape[-1]} != input_dim={self.input_dim}")
        if self.max_length is not None and inputs.shape[1] > self.max_length:
            raise ValueError(f"length {inputs.shape[1]} exceeds max_length={self.max_length}")
        if mask is None:
            return jnp.ones(inputs.shape[:2], bool)
        if mask.shape != inputs.shape[:2]:
            raise ValueError(f"mask must be (batch, length)={inputs.shape[:2]}, got {mask.shape}")
        return mask.astype(bool)

    def _embed(self, inputs: Array, positions: Array) -> Array:
        """Embedding plus, with ``max_length``, the learned embedding of ``positions``."""
        h = self.embed(inputs)
        if self.max_length is not None:
            h = h + self.pos[positions]
        dtype = self.dtype or (jnp.float32 if self.vocab_size is not None else inputs.dtype)
        return h.astype(dtype)

    def __call__(self, inputs: Array, mask: Array | None = None, *, deterministic: bool = True):
        """Tokens ``(batch, length)`` or features ``(batch, length, input_dim)`` -> logits.

        Returns ``(batch, num_classes)`` (classify), ``(batch, length, out)`` (lm) or hidden
        states ``(batch, length, d_model)`` (none).
        """
        mask = self._check(inputs, mask)
        positions = jnp.maximum(valid_positions(mask), 0)  # padding takes no position
        h = self.drop(self._embed(inputs, positions), deterministic=deterministic)
        for block in self.blocks:
            h = block(h, mask, deterministic=deterministic)
        h = apply_norm(self.final_norm, h, mask, deterministic)
        if self.head == "none":
            return h
        if self.head == "lm":
            return self.out(h).astype(jnp.float32)
        pooled = masked_mean(h, mask) if self.pooling == "mean" else last_valid(h, mask)
        return self.out(pooled)

    def init_state(self, batch: int):
        """Decoding state: one recurrent state per block, and the position counter."""
        return {
            "blocks": [block.init_state(batch) for block in self.blocks],
            "pos": jnp.zeros((batch,), jnp.int32),
        }

    def step(self, state, inputs_t: Array, mask_t: Array | None = None):
        """One token ``(batch,)`` (or features ``(batch, input_dim)``) -> per-position output."""
        if self.head == "classify":
            raise ValueError("step decodes per position: use head='lm' or 'none'")
        if mask_t is None:
            mask_t = jnp.ones(inputs_t.shape[:1], bool)
        h = self._embed(inputs_t[:, None], state["pos"][:, None])[:, 0]
        blocks = []
        for block, s in zip(self.blocks, state["blocks"], strict=True):
            s, h = block.step(s, h, mask_t)
            blocks.append(s)
        h = apply_norm(self.final_norm, h, mask_t, True)
        out = h if self.head == "none" else self.out(h).astype(jnp.float32)
        pos = state["pos"] + mask_t.astype(jnp.int32)
        return {"blocks": blocks, "pos": pos}, out
