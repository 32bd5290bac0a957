"""A model's variables split into what the optimizer trains and what the model updates itself.

    variables = {"params": ..., "batch_stats": ...}      (batch_stats only with norm = batch)
    trainable(variables)   -> {"params": ...}            gradients, AdamW, parameter counts
    model_state(variables) -> {"batch_stats": ...}       replaced by the train step's forward

A model without batch norm has an empty state, and its trainable tree is the whole tree.
"""

from __future__ import annotations

from typing import Any

MODEL_STATE = ("batch_stats",)


def trainable(variables: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in variables.items() if k not in MODEL_STATE}


def model_state(variables: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in variables.items() if k in MODEL_STATE}
