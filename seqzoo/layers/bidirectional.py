"""A bidirectional wrapper for causal mixers: a forward copy plus a backward copy on the flip.

    y = f(x) + J b(J x)          J: the sequence flip,  f, b: two causal mixers (own parameters)

In matrix form, with the two copies' values stacked as heads, ``M = [M_f, J M_b J]``: a lower and an
upper triangular matrix, i.e. a quasiseparable mixer when ``M_f, M_b`` are semiseparable (the
diagonal is counted by both; Hydra's ``quasiseparable`` op is the refined version).

Padding: the flip is global, so the backward copy reads a right-padded row as a left-padded one;
the contract makes leading pads no-ops for causal mixers, hence right padding gives exactly the
shorter sequence's outputs here too. Holes count as positions where the inner mixer counts them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs
from seqzoo.layers.catalog import build_mixer, mixer_entry, mixer_info
from seqzoo.parallel.collectives import flip_sequence
from seqzoo.parallel.context import sequence_axis


def _flip(a):
    axis = sequence_axis()
    if axis is not None:  # sequence parallel: the flip also reverses the order of the shards
        return flip_sequence(a, axis)
    return jnp.flip(a, axis=1)


class Bidirectional(MatrixMixer):
    """``get_mixer("bi:<causal mixer>", d_model=..., **config)`` builds this.

    Attributes:
      mixer: the registry name of a causal mixer.
      config: that mixer's options as a tuple of ``(key, value)`` pairs.
    """

    mixer: str = "linear_attention"
    config: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        return f"bi:{self.mixer}"

    def length_limit(self) -> int | None:
        """The inner mixer's bound (e.g. ``bi:hyena``'s ``max_length``), or None."""
        inner = mixer_entry(self.mixer).cls(d_model=self.d_model, parent=None, **dict(self.config))
        return inner.length_limit()  # an unbound copy (parent=None): only its options are read

    @property
    def info(self) -> MixerInfo:
        inner = mixer_info(self.mixer)
        structure = "quasiseparable" if inner.structure == "semiseparable" else inner.structure
        return dataclasses.replace(
            inner, causal=False, structure=structure, paper=f"bidirectional {inner.paper}"
        )

    def setup(self):
        self.forward = build_mixer(
            self.mixer, d_model=self.d_model, name="forward", **dict(self.config)
        )
        self.backward = build_mixer(
            self.mixer, d_model=self.d_model, name="backward", **dict(self.config)
        )

    def mixer_inputs(self, x, mask, segment_ids=None):
        # segment_ids reach here only when the inner mixer supports them (the base checks info)
        fwd_seg = {} if segment_ids is None else {"segment_ids": segment_ids}
        bwd_seg = {} if segment_ids is None else {"segment_ids": _flip(segment_ids)}
        fwd = self.forward.mixer_inputs(x, mask, **fwd_seg)
        bwd = self.backward.mixer_inputs(_flip(x), _flip(mask), **bwd_seg)
        values = jnp.concatenate([fwd.values, _flip(bwd.values)], axis=2)
        return MixerInputs(values=values, mask=mask, aux={"forward": fwd, "backward": bwd})

    def mix_fast(self, inputs):
        fwd, bwd = inputs.aux["forward"], inputs.aux["backward"]
        return jnp.concatenate(
            [self.forward.mix_fast(fwd), _flip(self.backward.mix_fast(bwd))], axis=2
        )

    def mix_matrix(self, inputs):
        fwd, bwd = inputs.aux["forward"], inputs.aux["backward"]
        m_bwd = jnp.flip(self.backward.mix_matrix(bwd), axis=(2, 3))
        return jnp.concatenate([self.forward.mix_matrix(fwd), m_bwd], axis=1)

    def mixer_output(self, inputs, mixed):
        fwd, bwd = inputs.aux["forward"], inputs.aux["backward"]
        # The two copies are one mixer with one config: each owns half of the mixed heads. (Not
        # as many as its values have: a nonlinear mixer's mixed output is shaped its own way, e.g.
        # an LSTM's values are its 4 gates' pre-activations, its mixed output the hidden state.)
        heads = mixed.shape[2] // 2
        y_fwd = self.forward.mixer_output(fwd, mixed[:, :, :heads])
        y_bwd = self.backward.mixer_output(bwd, _flip(mixed[:, :, heads:]))
        return y_fwd + _flip(y_bwd)
