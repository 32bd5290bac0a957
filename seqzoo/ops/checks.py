"""Argument checks shared by the ops: positive ints, shapes, groups and stable state matrices.

Each raises ``ValueError`` naming the argument, so an op's error says which input is wrong.
"""

from __future__ import annotations

import jax
import numpy as np

Array = jax.Array


def check_positive_int(value, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (``bool`` is not an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_power_of_two(value, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a positive power of two."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value!r}")


def check_shape(name: str, X: Array | None, *shapes: tuple) -> None:
    """``ValueError`` naming ``name`` unless X is None or has one of ``shapes``."""
    if X is not None and X.shape not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {X.shape}")


def check_groups(name: str, X: Array, lead: tuple, n: int, units: int, unit_name: str, *,
                 shared_ok: bool = True) -> None:
    """Validate X: (*lead, g, n) with g dividing ``units``, or (*lead, n) if ``shared_ok``."""
    k = len(lead)
    grouped = X.ndim == k + 2
    if not (grouped or (shared_ok and X.ndim == k + 1)) or X.shape[:k] != lead or X.shape[-1] != n:
        forms = [str(lead + ("g", n))] + ([str(lead + (n,))] if shared_ok else [])
        raise ValueError(f"{name} must have shape {' or '.join(forms)}, got {X.shape}")
    if grouped and units % X.shape[-2] != 0:
        raise ValueError(
            f"{name} has g={X.shape[-2]} groups, which must divide {unit_name}={units}"
        )


def check_stable(name: str, A) -> None:
    """Raise ``ValueError`` when a concrete ``A`` has an entry with positive real part.

    The state-space ops assume a stable system (every ``|exp(dt A)| <= 1``); a positive real part
    makes the state grow without bound. Under ``jit`` ``A`` is traced and cannot be inspected,
    so this checks eager calls only (the layers parameterise ``A = -exp(.)``, stable by design).
    """
    try:
        values = np.asarray(A)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    worst = float(np.max(np.real(values))) if values.size else 0.0
    if worst > 0:
        raise ValueError(
            f"{name} must have non-positive real part (a stable system); its largest is {worst:g}"
        )
