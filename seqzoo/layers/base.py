"""The matrix-mixer contract every seqzoo sequence mixer implements.

Every mixer computes ``y = out(M v)``: an input stage turns ``x: (batch, length, d_model)`` into
per-head values ``v: (batch, length, heads, head_dim)``, a structured mixing matrix
``M: (batch, heads, length, length)`` mixes them along the sequence, and an output stage maps the
mixed values back to ``(batch, length, d_model)``. This is the view of the Hydra paper
(Hwang et al., 2024, "Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers").

A subclass implements four small pieces and inherits the public paths:

* ``mixer_inputs(x, mask[, segment_ids]) -> MixerInputs``: projections; ``MixerInputs.values``
  is ``v`` and ``MixerInputs.aux`` whatever the other pieces need (queries, decays, gates...).
* ``mix_fast(inputs) -> (batch, length, heads, head_dim)``: the efficient algorithm (shaped as
  ``v``; a nonlinear mixer without ``M`` may shape it its own way, only its output stage reads it).
* ``mix_matrix(inputs) -> (batch, heads, length, length)``: the dense ``M``.
* ``mixer_output(inputs, mixed) -> (batch, length, d_model)``.

and, for causal mixers, ``init_state(batch)`` and ``step(state, x_t, mask_t=None)``.

Public paths (all take ``mask: (batch, length)`` bool, True at valid positions):

* ``__call__(x, mask)`` fast path, ``dense(x, mask)`` the same output through ``M``,
  ``matrix(x, mask)`` returns ``M`` itself.

Inputs: ``x`` must be floating (an integer or bool ``x`` is refused with a ``TypeError``: embed
tokens first); outputs have ``x``'s dtype.

Padding: padded positions never influence valid ones, in any path; values are zeroed there and each
mixer removes padded columns from the parts of ``M`` that are normalised or data dependent. Outputs
at padded positions are zero. Right padding gives exactly the outputs of the shorter sequence. For
causal mixers leading pads are no-ops too (left padding gives the shorter sequence's outputs): the
``bi:`` wrapper's backward copy reads a right-padded row flipped, i.e. left padded. Whether a hole
(a pad between valid tokens) or, for non-causal mixers, left padding counts as a position is each
mixer's own rule, stated in its docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

STRUCTURES = (
    "dense",
    "low-rank",
    "toeplitz",
    "vandermonde",
    "cauchy",
    "semiseparable",
    "quasiseparable",
    "sparse",
    "none",
)


@dataclasses.dataclass(frozen=True)
class MixerInfo:
    """Static facts about a mixer, shown by ``seqzoo list`` and used by the contract tests.

    Attributes:
      causal: ``M`` is lower triangular and a recurrent ``step`` exists.
      data_dependent: ``M`` depends on the input (``False``: a fixed learned matrix).
      structure: one of ``STRUCTURES``; ``"none"`` for nonlinear mixers without an ``M``.
      cost: the fast path's cost class, e.g. ``"O(L^2 D)"`` or ``"O(L D N)"``.
      paper: short citation of the paper the mixer follows.
      has_matrix: ``False`` for nonlinear mixers (LSTM, GRU) whose outputs are not ``M v``.
      max_length_attr: name of the attribute bounding the length of fixed-size mixers, or None.
      segments: accepts ``segment_ids`` (packed sequences: no mixing across segments, recurrent
        state reset at each segment start).
      sequence_parallel: the fast path runs with the sequence split over devices
        (``seqzoo.parallel``; without ``segment_ids``).

    ``capabilities`` names what a mixer can do, from ``CAPABILITIES``: ``"matrix"``
    (``has_matrix``), ``"segment_ids"`` (``segments``), ``"sequence_parallel"`` and ``"step"``
    (causal mixers); ``seqzoo.registry.mixers_with`` queries the registry by them.
    """

    CAPABILITIES: ClassVar[tuple[str, ...]] = (
        "matrix", "segment_ids", "sequence_parallel", "step"
    )

    causal: bool
    data_dependent: bool
    structure: str
    cost: str
    paper: str
    has_matrix: bool = True
    max_length_attr: str | None = None
    segments: bool = False
    sequence_parallel: bool = False

    @property
    def capabilities(self) -> frozenset[str]:
        """The names of ``CAPABILITIES`` this mixer has."""
        has = (self.has_matrix, self.segments, self.sequence_parallel, self.causal)
        return frozenset(name for name, yes in zip(self.CAPABILITIES, has, strict=True) if yes)

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MixerInputs:
    """What the input stage hands to the mixing and output stages.

    Attributes:
      values: ``v: (batch, length, heads, head_dim)``, zero at padded positions.
      mask: ``(batch, length)`` bool, True at valid positions.
      aux: mixer-specific arrays (a dict), e.g. queries, keys, decays, gates.
    """

    values: Array
    mask: Array
    aux: dict[str, Any]


def apply_matrix(matrix: Array, values: Array) -> Array:
    """The dense path: ``y[b, i, h] = sum_j M[b, h, i, j] v[b, j, h]``.

    Args:
      matrix: ``M: (batch, heads, length, length)``.
      values: ``v: (batch, length, heads, head_dim)``.
    Returns:
      ``(batch, length, heads, head_dim)`` in float32.
    """
    return jnp.einsum(
        "bhij,bjhp->bihp",
        matrix.astype(jnp.float32),
        values.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )


def zero_padded(x: Array, mask: Array) -> Array:
    """Zero ``x: (batch, length, ...)`` where ``mask: (batch, length)`` is False."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


def keep_where(mask_t: Array, new: Any, old: Any) -> Any:
    """Per batch row, take ``new`` where ``mask_t: (batch,)`` is True and ``old`` elsewhere.

    Used by ``step`` so that a padded token leaves a recurrent state untouched.
    """

    def pick(n, o):
        return jnp.where(mask_t.reshape(mask_t.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree_util.tree_map(pick, new, old)


class MatrixMixer(nn.Module):
    """Base class of every seqzoo mixer (see the module docstring for the contract).

    Attributes:
      d_model: the model width ``D``; inputs are ``x: (batch, length, D)``.
      dtype: compute dtype of projections (None: flax's promotion of the input's dtype with the
        float32 parameters, so bf16 inputs still project in float32; ``jnp.bfloat16`` for bf16
        compute). Parameters are float32 and every scan or normaliser accumulates in float32
        whatever this is.
    """

    d_model: int
    dtype: Any = None

    info: ClassVar[MixerInfo]
    registry_name: ClassVar[str | None] = None  # set by ``register_mixer``

    # ---- pieces a subclass implements -------------------------------------------------------
    def mixer_inputs(self, x: Array, mask: Array) -> MixerInputs:
        raise NotImplementedError

    def mix_fast(self, inputs: MixerInputs) -> Array:
        raise NotImplementedError

    def mix_matrix(self, inputs: MixerInputs) -> Array:
        raise NotImplementedError

    def mixer_output(self, inputs: MixerInputs, mixed: Array) -> Array:
        raise NotImplementedError

    def init_state(self, batch: int) -> Any:
        """The zero recurrent state for ``batch`` sequences (causal mixers only)."""
        raise NotImplementedError(f"{type(self).__name__} is not causal: it has no step")

    def step_fn(self, state: Any, x_t: Array, mask_t: Array) -> tuple[Any, Array]:
        """One recurrent step on ``x_t: (batch, d_model)``; ``mask_t: (batch,)`` bool."""
        raise NotImplementedError(f"{type(self).__name__} is not causal: it has no step")

    def length_limit(self) -> int | None:
        """The longest input length this mixer accepts (``info.max_length_attr``), or None."""
        bound = self.info.max_length_attr
        return None if bound is None else getattr(self, bound)

    def label(self) -> str:
        """How error messages name this mixer: its registry name, or its class name."""
        return self.registry_name or type(self).__name__

    # ---- the public paths --------------------------------------------------------------------
    def __call__(
        self, x: Array, mask: Array | None = None, segment_ids: Array | None = None
    ) -> Array:
        """Fast path. ``x: (batch, length, d_model)``, ``mask: (batch, length)`` -> same shape.

        ``segment_ids: (batch, length)`` int (mixers with ``info.segments``): packed sequences;
        positions of different segments do not mix.
        """
        inputs, x = self._inputs(x, mask, segment_ids)
        return self._finish(inputs, self.mix_fast(inputs), x)

    def dense(self, x: Array, mask: Array | None = None, segment_ids: Array | None = None) -> Array:
        """Dense path: builds ``M`` and applies it, ``y = out(M v)``; equals ``__call__``."""
        self._require_matrix()
        inputs, x = self._inputs(x, mask, segment_ids)
        mixed = apply_matrix(self.mix_matrix(inputs), inputs.values)
        return self._finish(inputs, mixed, x)

    def matrix(
        self, x: Array, mask: Array | None = None, segment_ids: Array | None = None
    ) -> Array:
        """The mixing matrix ``M: (batch, heads, length, length)`` for input ``x``."""
        self._require_matrix()
        return self.mix_matrix(self._inputs(x, mask, segment_ids)[0])

    def step(self, state: Any, x_t: Array, mask_t: Array | None = None) -> tuple[Any, Array]:
        """Recurrent path: ``x_t: (batch, d_model)`` -> ``(state, y_t: (batch, d_model))``.

        A padded token (``mask_t`` False) gives ``y_t = 0``; what it does to the state is the
        mixer's own rule, the one its parallel paths follow, so that ``step`` under ``lax.scan``
        equals ``__call__`` for any mask.
        """
        if not self.info.causal:
            raise NotImplementedError(f"{type(self).__name__} is not causal: it has no step")
        self.require_floating(x_t, "x_t")
        if x_t.ndim != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"x_t must be (batch, d_model={self.d_model}), got shape {x_t.shape}")
        if mask_t is None:
            mask_t = jnp.ones(x_t.shape[:1], bool)
        elif mask_t.shape != x_t.shape[:1]:
            raise ValueError(f"mask_t must be (batch,)={x_t.shape[:1]}, got {mask_t.shape}")
        mask_t = mask_t.astype(bool)
        x_t = jnp.where(mask_t[:, None], x_t, jnp.zeros((), x_t.dtype))
        state, y_t = self.step_fn(state, x_t, mask_t)
        y_t = jnp.where(mask_t[:, None], y_t, jnp.zeros((), y_t.dtype))
        return state, y_t.astype(x_t.dtype)

    # ---- shared helpers ----------------------------------------------------------------------
    def compute_dtype(self, x: Array) -> Any:
        return self.dtype or x.dtype

    def require_floating(self, x: Array, what: str = "x") -> None:
        """Refuse a non-floating ``x`` (integer token ids, bools): a mixer would silently compute
        in that dtype and return integers."""
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"mixer {self.label()!r} needs floating inputs, got {what} of dtype {dtype}: "
                "embed integer tokens first (e.g. nn.Embed) or cast, e.g. x.astype(jnp.float32)"
            )

    def check_inputs(self, x: Array, mask: Array | None) -> tuple[Array, Array]:
        """Validate ``x: (batch, length, d_model)`` floating and ``mask: (batch, length)``."""
        self.require_floating(x)
        if x.ndim != 3:
            raise ValueError(f"x must be (batch, length, d_model), got rank {x.ndim}: {x.shape}")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x's last dimension {x.shape[-1]} does not match d_model={self.d_model}"
            )
        if x.shape[1] < 1:
            raise ValueError("x must have length >= 1")
        limit = self.length_limit()
        if limit is not None and x.shape[1] > limit:
            raise ValueError(
                f"length {x.shape[1]} exceeds {self.info.max_length_attr}={limit} of mixer "
                f"{self.label()!r} (the longest input it is built for; raise it in its options)"
            )
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        elif mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be (batch, length)={x.shape[:2]}, got {mask.shape}")
        mask = mask.astype(bool)
        return zero_padded(x, mask), mask

    def _require_matrix(self):
        if not self.info.has_matrix:
            raise NotImplementedError(f"{type(self).__name__} is nonlinear: it has no matrix M")

    def _inputs(self, x, mask, segment_ids) -> tuple[MixerInputs, Array]:
        """Validated inputs through ``mixer_inputs``; ``segment_ids`` only where supported."""
        x, mask = self.check_inputs(x, mask)
        if segment_ids is None:
            return self.mixer_inputs(x, mask), x
        if not self.info.segments:
            raise ValueError(f"{type(self).__name__} does not support segment_ids")
        if segment_ids.shape != x.shape[:2]:
            raise ValueError(
                f"segment_ids must be (batch, length)={x.shape[:2]}, got {segment_ids.shape}"
            )
        return self.mixer_inputs(x, mask, segment_ids=segment_ids), x

    def _finish(self, inputs: MixerInputs, mixed: Array, x: Array) -> Array:
        y = self.mixer_output(inputs, zero_padded(mixed, inputs.mask))
        return zero_padded(y, inputs.mask).astype(x.dtype)
