"""``model.mixer_options`` checked before any data or compute: each mixer of the model is built
with its options and its ``init`` traced abstractly (``jax.eval_shape``: shapes only) on a short
input ``(1, PROBE_LENGTH, d_model)``. A failure of any kind (a mixer's own ``ValueError``, a
``ZeroDivisionError`` for ``num_heads=0``, a ``TypeError`` for ``num_heads=-1``) becomes a
``ValueError`` naming ``model.mixer_options``, the mixer, and the option at fault: the one
whose removal (back to its default) lets the mixer build.

Failures that depend on the task's real length appear when the whole model is traced on the
task's inputs (``seqzoo.runner.build``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from seqzoo.config import ModelConfig
from seqzoo.models.sequence_model import layer_mixers, mixer_options
from seqzoo.registry import get_mixer, mixer_entry
from seqzoo.runner.model import DTYPES

PROBE_LENGTH = 4  # every registered mixer builds at this length
RESERVED = ("d_model", "dtype", "name")  # set by the model, not by mixer options


def check_mixer_options(m: ModelConfig) -> None:
    """Raise ``ValueError`` unless every mixer of ``m`` builds with its ``m.mixer_options``.

    Also refused: tables for mixers ``m.mixer`` does not use (they would be ignored), a mix of
    tables and plain options, and the options the model sets itself (``RESERVED``).
    """
    names = m.mixer.split(",")
    tables = sorted(k for k, v in m.mixer_options.items() if isinstance(v, Mapping))
    unused = sorted(set(tables) - set(names))
    if unused:
        raise ValueError(
            f"model.mixer_options has tables for {unused}, which model.mixer={m.mixer!r} does "
            f"not use; remove them (or key the options by the mixers used: {names})"
        )
    dtype = DTYPES[m.dtype]
    for name in dict.fromkeys(layer_mixers(tuple(names), m.n_layers, m.bidirectional)):
        try:
            options = mixer_options(m.mixer_options, name)
        except ValueError as e:
            raise ValueError(f"model.mixer_options: {e}") from None
        reserved = sorted(set(options) & set(RESERVED))
        if reserved:
            raise ValueError(
                f"model.mixer_options sets {reserved} of mixer {name!r}, which the model sets "
                f"itself: use model.d_model / model.dtype instead"
            )
        error = _build_error(name, m.d_model, dtype, options)
        if error is not None:
            raise ValueError(_explain(name, m.d_model, dtype, options, error)) from error


def _build_error(name: str, d_model: int, dtype: Any, options: dict) -> Exception | None:
    """The exception building mixer ``name`` and tracing its ``init`` raises, or None."""
    x = jax.ShapeDtypeStruct((1, PROBE_LENGTH, d_model), dtype)
    mask = jax.ShapeDtypeStruct((1, PROBE_LENGTH), jnp.bool_)
    try:
        mixer = get_mixer(name, d_model=d_model, dtype=dtype, **options)
        jax.eval_shape(mixer.init, jax.random.PRNGKey(0), x, mask)
    except Exception as e:  # any failure is a bad option or a broken mixer: _explain says which
        return e
    return None


def _explain(name: str, d_model: int, dtype: Any, options: dict, error: Exception) -> str:
    """The message for ``error``: the options without which the mixer builds, if any, with
    their defaults; else the mixer, its width and all its options."""
    reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    culprits = [
        key
        for key in options
        if _build_error(name, d_model, dtype, {k: v for k, v in options.items() if k != key})
        is None
    ]
    if culprits:
        defaults = _defaults(name)
        given = ", ".join(
            f"{k}={options[k]!r}" + (f" (default {defaults[k]!r})" if k in defaults else "")
            for k in culprits
        )
        return (
            f"model.mixer_options: mixer {name!r} (model.d_model={d_model}) rejects {given}: "
            f"{reason}"
        )
    given = f"model.mixer_options {options}" if options else "its default options"
    return (
        f"mixer {name!r} cannot be built with model.d_model={d_model} and {given}: {reason}; "
        f"change model.d_model or model.mixer_options, or choose another model.mixer"
    )


def _defaults(name: str) -> dict[str, Any]:
    """The default of each option of mixer ``name`` that has one."""
    cls = mixer_entry(name.removeprefix("bi:")).cls
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
