"""Typed experiment configuration: nested frozen dataclasses, read from TOML, overridable as
``section.key=value``.

    cfg = apply_overrides(ExperimentConfig(), ["model.mixer=gla", "optim.lr=3e-3"])
    cfg = load_config("experiments/mqar_gla.toml")       # file values over the defaults
    text = to_toml(cfg)                                   # load_config reads it back unchanged

Every value is checked against its field's type (an int is accepted for a float, nothing else is
converted); an unknown key or a value of the wrong type raises ``ValueError`` naming the key,
before any compute. Dict fields (``model.mixer_options``) take JSON on the command line.

Each field also declares the values it may take, its domain (``setting(default, domain)``, see
``seqzoo.domains``): ``check_values(cfg)`` checks them all at once and names every key out of
its domain with the values it allows. The runner calls it before any compute
(``seqzoo.runner.build.check_config``); reading a config does not, so an old run's config
stays readable.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from seqzoo.domains import (
    ABOVE_0,
    ANY,
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    RELATIVE_NAME,
    SEED,
    OneOf,
    Range,
    Registered,
    domain_of,
    setting,
)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task to train on and its size (see ``seqzoo.tasks``).

    ``num_kv_pairs`` is MQAR's, ``num_tokens`` selective copying's; ``data_dir`` is read by
    tasks built from files (which keep their released splits: ``num_train`` etc. are for
    generated tasks; ``num_val = 0``: no validation split, the test split is evaluated instead,
    as for the tasks released without one). ``resolution`` (32 / 64 / 128) and ``difficulty``
    (``curv_baseline``, ``curv_contour_length_9``, ``curv_contour_length_14``) pick the
    Pathfinder images; their sequence length is ``resolution ** 2``, not ``seq_len``.
    ``permuted``: sequential (Fashion-)MNIST with the pixels in a fixed random order drawn from
    ``seed`` (psMNIST). ``test_seq_len`` (0: none) gives the test split of a synthetic task
    another length (length extrapolation). ``random_non_queries``: MQAR's filler slots hold
    uniform random tokens (Zoology's generator default) or 0 (Zoology's figure-2 configs).
    ``context_repeats``: JRT-Prompt on MQAR (2: read twice, Arora et al. 2024; ``seq_len``
    counts every copy); ``repeat_scope`` says what is repeated: ``context``, the key-value pairs
    only, before the queries, or ``prompt``, the paper's layout, the whole row (pairs and
    queries) with only the last copy labelled. ``num_queries``: MQAR queries that many of its
    keys, a random subset (0: every key). See ``seqzoo.data.synthetic.mqar``.
    ``normalize`` (image tasks): each pixel is one float feature in [0, 1] through a linear
    encoder (S4's setting) instead of one of 256 tokens through an embedding (LRA's).
    ``preset``, ``dataset``, ``splits`` (the ``tfds`` task): how a prepared TFDS dataset
    becomes a task (``lra_image``: grayscale CIFAR-10; ``lra_text``: IMDB bytes, cut to
    ``seq_len``), the TFDS dataset to read instead of the preset's (``""``: the preset's, e.g.
    ``cifar10``; ``name/config:version`` pins one), and seqzoo splits mapped to TFDS splits over
    the preset's (``{"val": "train[95%:]"}``; ``""`` drops one).
    """

    name: str = setting("mqar", Registered("seqzoo.tasks:get_task"))
    seq_len: int = setting(64, AT_LEAST_1)
    num_kv_pairs: int = setting(8, AT_LEAST_1)
    num_tokens: int = setting(16, AT_LEAST_1)
    vocab_size: int = setting(128, AT_LEAST_1)
    num_train: int = setting(40000, AT_LEAST_1)
    num_val: int = setting(500, AT_LEAST_0)
    num_test: int = setting(500, AT_LEAST_1)
    seed: int = setting(0, SEED)
    data_dir: str = setting("", ANY)  # a directory, checked by the task (tasks.check_data_dir)
    resolution: int = setting(32, OneOf("seqzoo.data.pathfinder:LRA_CONFIGS"))
    difficulty: str = setting(
        "curv_contour_length_14", OneOf("seqzoo.data.pathfinder:DIFFICULTIES")
    )
    permuted: bool = setting(False, ANY)
    test_seq_len: int = setting(0, AT_LEAST_0)
    random_non_queries: bool = setting(True, ANY)
    context_repeats: int = setting(1, AT_LEAST_1)
    repeat_scope: str = setting("context", OneOf("seqzoo.data.synthetic:REPEAT_SCOPES"))
    num_queries: int = setting(0, AT_LEAST_0)
    normalize: bool = setting(False, ANY)
    preset: str = setting("lra_image", OneOf("seqzoo.data.tfds_presets:PRESETS"))
    dataset: str = setting("", ANY)  # checked by the tfds task (seqzoo.data.tfds_source)
    splits: dict[str, str] = setting(dict, ANY, factory=True)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A ``SequenceModel``; ``mixer`` may be ``"a,b"`` for a hybrid cycling over layers.

    ``mixer_options``: options for every mixer, or ``{name: options}`` for each mixer of
    ``mixer`` (checked by building each mixer abstractly: ``seqzoo.runner.mixer_options``).
    ``mlp_ratio``: MLP hidden width over ``d_model`` (LRA's mlp_dim / emb_dim). ``max_length``:
    learned position embeddings when > 0. ``dtype``: compute dtype, ``float32`` or ``bfloat16``
    (parameters stay float32).
    """

    mixer: str = setting("attention", Registered("seqzoo.registry:mixer_entry", separator=","))
    d_model: int = setting(64, AT_LEAST_1)
    n_layers: int = setting(2, AT_LEAST_1)
    mixer_options: dict[str, Any] = setting(dict, ANY, factory=True)
    bidirectional: bool = setting(False, ANY)
    mlp: str = setting("none", OneOf("seqzoo.models.blocks:MLPS"))
    mlp_ratio: float = setting(4.0, ABOVE_0)
    norm: str = setting("rms", OneOf("seqzoo.models.norms:NORMS"))
    dropout: float = setting(0.0, FRACTION)
    max_length: int = setting(0, AT_LEAST_0)
    dtype: str = setting("float32", OneOf("seqzoo.runner.model:DTYPES"))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warmup then cosine decay to ``final_lr_fraction`` of the peak, global-norm
    gradient clipping; SSM parameters use ``ssm_lr`` and no weight decay (``runner.optim``).

    ``accumulate``: each batch of ``batch_size`` rows is run as ``accumulate`` microbatches of
    ``batch_size / accumulate`` rows whose gradients are summed into the batch's (the same
    update in less memory; ``runner.steps``); it must divide ``batch_size``.
    """

    lr: float = setting(1e-2, AT_LEAST_0)
    ssm_lr: float = setting(1e-3, AT_LEAST_0)
    weight_decay: float = setting(0.1, AT_LEAST_0)
    warmup_steps: int = setting(50, AT_LEAST_0)
    steps: int = setting(600, AT_LEAST_1)
    batch_size: int = setting(64, AT_LEAST_1)
    accumulate: int = setting(1, AT_LEAST_1)
    grad_clip: float = setting(1.0, ABOVE_0)
    b1: float = setting(0.9, FRACTION)
    b2: float = setting(0.98, FRACTION)
    final_lr_fraction: float = setting(0.01, Range(0, 1))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh ``(data, seq)``: batches split over ``data``, each sequence over ``seq``
    (sequence parallelism, ``seqzoo.parallel``; ``seq > 1`` needs mixers whose ``MixerInfo`` says
    ``sequence_parallel``, ``seqzoo.registry.SEQUENCE_PARALLEL_MIXERS``). ``data = 0``: every
    local device not used by ``seq``. ``params``: ``replicated`` on every device, or ``fsdp``
    (parameters and optimizer state sharded over all devices, gathered for the compute;
    ``seqzoo.runner.sharding``).
    ``attention``: how softmax attention crosses the ``seq`` shards: ``ring`` (keys and values
    passed around the shards) or ``ulysses`` (DeepSpeed-Ulysses: all-to-all from sequence
    shards to head shards and back; ``mesh.seq`` must divide the heads). ``carry``: how linear
    recurrences (linear attention, SSD, the scans) pass their states across the ``seq`` shards:
    ``all_gather`` (LASP-2) or ``all_scan`` (ZeCO's pipelined chunks; ``seqzoo.parallel.carry``).
    """

    data: int = setting(0, AT_LEAST_0)
    seq: int = setting(1, AT_LEAST_1)
    params: str = setting("replicated", OneOf("seqzoo.runner.sharding:PARAM_MODES"))
    attention: str = setting("ring", OneOf("seqzoo.parallel.context:ATTENTION_SCHEMES"))
    carry: str = setting("all_gather", OneOf("seqzoo.parallel.context:CARRY_SCHEMES"))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: task, model, optimizer, and how the run is logged and checkpointed.

    ``name`` names the run folder (``runs/<name>-<time>``), so it is a relative name that stays
    inside ``runs/``. Evaluation on the validation split every ``eval_every`` steps (the best
    one is kept as a checkpoint), training metrics every ``log_every``, a checkpoint every
    ``checkpoint_every`` (the last ``keep_checkpoints`` are kept) and at the end.
    ``max_minutes`` (0: none) is a wall-clock budget from the start of the run: training stops
    at the first step past it, then the run evaluates and tests as at its last step.
    """

    name: str = setting("default", RELATIVE_NAME)
    description: str = setting("MQAR with a 2-layer attention model, CPU-sized", ANY)
    seed: int = setting(0, SEED)
    eval_every: int = setting(100, AT_LEAST_1)
    log_every: int = setting(10, AT_LEAST_1)
    checkpoint_every: int = setting(100, AT_LEAST_1)
    keep_checkpoints: int = setting(2, AT_LEAST_1)
    max_minutes: float = setting(0.0, AT_LEAST_0)
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()


# ---- typed values ----------------------------------------------------------------------------
def type_name(kind: Any) -> str:
    """``int``, ``float``, ``dict`` ... for a field's type annotation."""
    return getattr(typing.get_origin(kind) or kind, "__name__", str(kind))


def _check(key: str, value: Any, kind: Any) -> Any:
    """``value`` if it has type ``kind`` (an int is made a float for float fields)."""
    base = typing.get_origin(kind) or kind
    if base is float and type(value) is int:
        return float(value)
    if type(value) is not base:
        raise ValueError(f"{key} expects {type_name(kind)}, got {value!r}")
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
        raise ValueError(f"{key} expects {type_name(kind)}, got {text!r}") from None


def _unknown(key: str, types: dict[str, Any]) -> ValueError:
    return ValueError(f"unknown config key {key!r}; valid here: {', '.join(sorted(types))}")


def check_values(config: Any, prefix: str = "") -> None:
    """Raise ``ValueError`` unless every value of ``config`` (a config dataclass, sections
    included) has its field's type and lies in its field's domain. The message has one line per
    bad value, naming the key (``prefix`` + field name, e.g. ``optim.lr``) and its domain."""
    problems = list(_problems(config, prefix))
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"{len(problems)} config values are invalid:\n  " + "\n  ".join(problems))


def _problems(config: Any, prefix: str):
    """One message per value of ``config`` of the wrong type or outside its domain."""
    types = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        key, value = f"{prefix}{field.name}", getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _problems(value, f"{key}.")
            continue
        try:
            value = _check(key, value, types[field.name])
        except ValueError as e:
            yield str(e)
            continue
        problem = domain_of(field).error(key, value)
        if problem:
            yield problem


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


def toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # also valid TOML for inf, -inf, nan and 1e-05
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
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
                f"{f.name} = {toml_value(getattr(value, f.name))}\n"
                for f in dataclasses.fields(value)
            )
            sections.append(f"\n[{field.name}]\n{body}")
        else:
            scalars.append(f"{field.name} = {toml_value(value)}\n")
    return "".join(scalars + sections)
