"""Typed experiment configuration: nested frozen dataclasses, read from TOML, overridable as
``section.key=value``.

    cfg = apply_overrides(ExperimentConfig(), ["model.mixer=gla", "optim.lr=3e-3"])
    cfg = load_config("experiments/mqar_gla.toml")       # file values over the defaults
    text = to_toml(cfg)                                   # load_config reads it back unchanged

Every value is checked against its field's type (an int is accepted for a float, nothing else is
converted); an unknown key or a value of the wrong type raises ``ValueError`` naming the key,
before any compute. Dict fields (``model.mixer_options``) take JSON on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task to train on and its size (see ``seqzoo.tasks``).

    ``num_kv_pairs`` is MQAR's, ``num_tokens`` selective copying's; ``data_dir`` is read by
    tasks built from files (which keep their released splits: ``num_train`` etc. are for
    generated tasks). ``resolution`` (32 / 64 / 128) and ``difficulty`` (``curv_baseline``,
    ``curv_contour_length_9``, ``curv_contour_length_14``) pick the Pathfinder images; their
    sequence length is ``resolution ** 2``, not ``seq_len``. ``permuted``: sequential
    (Fashion-)MNIST with the pixels in a fixed random order drawn from ``seed`` (psMNIST).
    ``test_seq_len`` (0: none) gives the test split of a synthetic task another length
    (length extrapolation). ``random_non_queries``: MQAR's filler slots hold uniform random
    tokens (Zoology's generator default) or 0 (Zoology's figure-2 configs). ``normalize``
    (image tasks): each pixel is one float feature in [0, 1] through a linear encoder (S4's
    setting) instead of one of 256 tokens through an embedding (LRA's).
    """

    name: str = "mqar"
    seq_len: int = 64
    num_kv_pairs: int = 8
    num_tokens: int = 16
    vocab_size: int = 128
    num_train: int = 40000
    num_val: int = 500
    num_test: int = 500
    seed: int = 0
    data_dir: str = ""
    resolution: int = 32
    difficulty: str = "curv_contour_length_14"
    permuted: bool = False
    test_seq_len: int = 0
    random_non_queries: bool = True
    normalize: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A ``SequenceModel``; ``mixer`` may be ``"a,b"`` for a hybrid cycling over layers.

    ``mixer_options``: options for every mixer, or ``{name: options}``. ``dtype``: compute dtype,
    ``float32`` or ``bfloat16`` (parameters stay float32).
    """

    mixer: str = "attention"
    d_model: int = 64
    n_layers: int = 2
    mixer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    bidirectional: bool = False
    mlp: str = "none"
    mlp_ratio: float = 4.0  # MLP hidden width over d_model (LRA's mlp_dim / emb_dim)
    norm: str = "rms"
    dropout: float = 0.0
    max_length: int = 0  # learned position embeddings when > 0
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warmup then cosine decay to ``final_lr_fraction`` of the peak, global-norm
    gradient clipping; SSM parameters use ``ssm_lr`` and no weight decay (``runner.optim``)."""

    lr: float = 1e-2
    ssm_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    steps: int = 600
    batch_size: int = 64
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.98
    final_lr_fraction: float = 0.01


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh ``(data, seq)``: batches split over ``data``, each sequence over ``seq``
    (sequence parallelism, ``seqzoo.parallel``; ``seq > 1`` needs mixers listed in
    ``seqzoo.parallel.SEQUENCE_PARALLEL_MIXERS``). ``data = 0``: every local device not used by
    ``seq``. ``params``: ``replicated`` on every device, or ``fsdp`` (parameters and optimizer
    state sharded over all devices, gathered for the compute; ``seqzoo.runner.sharding``).
    """

    data: int = 0
    seq: int = 1
    params: str = "replicated"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: task, model, optimizer, and how the run is logged and checkpointed.

    Evaluation on the validation split every ``eval_every`` steps (the best one is kept as a
    checkpoint), training metrics every ``log_every``, a checkpoint every ``checkpoint_every``
    (the last ``keep_checkpoints`` are kept) and at the end. ``max_minutes`` (0: none) is a
    wall-clock budget from the start of the run: training stops at the first step past it,
    then the run evaluates and tests as at its last step.
    """

    name: str = "default"
    description: str = "MQAR with a 2-layer attention model, CPU-sized"
    seed: int = 0
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_minutes: float = 0.0
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()


# ---- typed values ----------------------------------------------------------------------------
def _type_name(kind: Any) -> str:
    return getattr(typing.get_origin(kind) or kind, "__name__", str(kind))


def _check(key: str, value: Any, kind: Any) -> Any:
    """``value`` if it has type ``kind`` (an int is made a float for float fields)."""
    base = typing.get_origin(kind) or kind
    if base is float and type(value) is int:
        return float(value)
    if type(value) is not base:
        raise ValueError(f"{key} expects {_type_name(kind)}, got {value!r}")
    return value


def _parse(key: str, text: str, kind: Any) -> Any:
    """The command-line text of ``key`` as a value of type ``kind``."""
    base = typing.get_origin(kind) or kind
    if base is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key} expects a bool (true/false), got {text!r}")
    if base is dict:
        try:
            return _check(key, json.loads(text), kind)
        except json.JSONDecodeError as e:
            raise ValueError(f"{key} expects a JSON object, got {text!r} ({e})") from None
    try:
        return base(text)
    except (TypeError, ValueError):
        raise ValueError(f"{key} expects {_type_name(kind)}, got {text!r}") from None


def _unknown(key: str, types: dict[str, Any]) -> ValueError:
    return ValueError(f"unknown config key {key!r}; valid here: {', '.join(sorted(types))}")


# ---- overrides -------------------------------------------------------------------------------
def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return ``config`` with each ``"a.b=value"`` override applied (typed, validated)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        config = _set(config, key.split("."), text, key)
    return config


def _set(config: Any, path: list[str], text: str, key: str) -> Any:
    types = typing.get_type_hints(type(config))
    if path[0] not in types:
        raise _unknown(key, types)
    current = getattr(config, path[0])
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ValueError(f"{key!r} is a section; set one of its keys, e.g. {key}.<key>=...")
        value = _set(current, path[1:], text, key)
    elif len(path) > 1:
        raise ValueError(f"unknown config key {key!r}: {path[0]!r} has no sub-keys")
    else:
        value = _parse(key, text, types[path[0]])
    return dataclasses.replace(config, **{path[0]: value})


# ---- TOML ------------------------------------------------------------------------------------
def from_dict(config: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """``config`` with the (nested) values of ``data`` set, each checked like an override."""
    types = typing.get_type_hints(type(config))
    changes = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in types:
            raise _unknown(key, types)
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{key!r} is a section: write it as a [{key}] table")
            changes[name] = from_dict(current, value, f"{key}.")
        else:
            changes[name] = _check(key, value, types[name])
    return dataclasses.replace(config, **changes)


def load_config(path: str | Path) -> ExperimentConfig:
    """The ``ExperimentConfig`` in TOML file ``path``: its values over the defaults; ``name``
    defaults to the file's stem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    data.setdefault("name", path.stem)
    try:
        return from_dict(ExperimentConfig(), data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # also valid TOML for inf, -inf, nan and 1e-05
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(
        f"cannot write {value!r} in a TOML config (TOML has no null: leave the key out)"
    )


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def to_toml(config: Any) -> str:
    """``config`` as TOML: top-level keys, then one table per section."""
    scalars, sections = [], []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            body = "".join(
                f"{f.name} = {_toml_value(getattr(value, f.name))}\n"
                for f in dataclasses.fields(value)
            )
            sections.append(f"\n[{field.name}]\n{body}")
        else:
            scalars.append(f"{field.name} = {_toml_value(value)}\n")
    return "".join(scalars + sections)
