"""Memory of a run's compiled steps, measured without data, and the clear out-of-memory error.

``abstract_build(cfg)`` is ``build(cfg)`` without reading or generating any data: the task's
shapes (length, vocabulary, classes, labels per row or per position, token or float inputs)
come from ``TASK_SHAPES``, and every split is one batch of zeros. ``step_memory`` lowers and
compiles the train and eval steps on abstract arguments (``jax.ShapeDtypeStruct``: nothing
runs, nothing is allocated) and reads XLA's ``memory_analysis``:

    peak = arguments + temporaries + outputs - outputs aliasing donated arguments

(the train step donates the parameters and optimizer state, so their updated copies are
counted once). This is what the backend asks for at once when the step runs.

``activation_estimate`` is the written estimate those numbers are checked against
(``benchmarks/memory_configs.py``): the activations a training step keeps for its backward
pass, counted per position and layer from the layer's projections, plus the optimizer's arrays:

    estimate = n_layers x (batch / accumulate) x length x d_model x 4 bytes x factor
               + (batch / accumulate) x length x 2 x classes x 4 bytes   (per-position heads:
                                                         the logits and their probabilities)
               + 16 bytes x params              (parameters, gradients, AdamW's two moments)
    factor   = 1 + sum over the layer's linear maps of (in + out) / d_model
               (weight matrices (in, out); short depthwise convolutions: channels in and out)
               + the widening feature maps' outputs kept / d_model (``feature_widths``)
               + the routed copies / d_model (MoM: ``routed_widths``)

1 for the residual stream (the norm's input); each linear map keeps its input for its weight
gradient and its output feeds an op that keeps it. A mixer's core (convolution, scan, attention)
is assumed to keep nothing more: its backward pass recomputes its intermediates
(``seqzoo.ops.lean_grad``). ``residual_bytes`` counts what JAX's autodiff actually keeps (the
VJP's residuals, traced, not compiled), the step between the estimate and XLA's allocation.

``OutOfMemory`` is what the runner raises when XLA reports ``RESOURCE_EXHAUSTED`` compiling or
running a step: the message names ``optim.batch_size`` and ``optim.accumulate`` and the
compiled step's size, the XLA error is its ``__cause__``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.extend.core import Literal

from seqzoo.config import ExperimentConfig, TaskConfig, check_values
from seqzoo.data import Dataset
from seqzoo.data.dataset import Split
from seqzoo.data.tfds_presets import PRESETS, Preset
from seqzoo.layers.catalog import mixer_entry
from seqzoo.layers.linear_attention import LinearAttention
from seqzoo.layers.mom import MoM
from seqzoo.models.sequence_model import mixer_options
from seqzoo.ops.feature_maps import feature_size
from seqzoo.runner.build import Built, check_accumulate, check_lengths, check_mixer_options
from seqzoo.runner.model import build_model, loss_and_accuracy, per_position
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.sharding import check_batch_size, make_mesh, mesh_shape
from seqzoo.runner.steps import eval_step_fn, opt_state_shape, stats_fn, train_step_fn
from seqzoo.runner.variables import model_state, trainable

GIB = 2**30

# ---- task shapes without data ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskShape:
    """What a model needs to know of a task's data: ``length`` (the longest split's),
    ``vocab_size`` (None: float inputs), ``num_classes``, ``per_position`` labels."""

    length: int
    vocab_size: int | None
    num_classes: int
    per_position: bool


def _synthetic(cfg: TaskConfig) -> TaskShape:
    return TaskShape(max(cfg.seq_len, cfg.test_seq_len), cfg.vocab_size, cfg.vocab_size, True)


def _image(length: int, classes: int):
    return lambda cfg: TaskShape(length, None if cfg.normalize else 256, classes, False)


def _tokens(vocab: int, classes: int):
    return lambda cfg: TaskShape(cfg.seq_len, vocab, classes, False)


# The data modules' constants, checked against built datasets in tests/test_memory.py.
TASK_SHAPES = {
    "mqar": _synthetic,
    "induction_heads": _synthetic,
    "selective_copying": _synthetic,
    "associative_recall": _synthetic,
    "listops": _tokens(16, 10),
    "lra_listops": _tokens(16, 10),
    "lra_retrieval": lambda cfg: TaskShape(2 * (cfg.seq_len // 2), 257, 2, False),
    "lra_imdb": _tokens(257, 2),
    "pathfinder": lambda cfg: _image(cfg.resolution**2, 2)(cfg),
    "lra_pathfinder": lambda cfg: _image(cfg.resolution**2, 2)(cfg),
    "lra_cifar10": _image(1024, 10),
    "smnist": _image(784, 10),
    "sfashion_mnist": _image(784, 10),
    "tfds": lambda cfg: _tfds_shape(PRESETS[cfg.preset])(cfg),
}


def _tfds_shape(preset: Preset):
    """The shapes of a tfds preset (an image preset's pixel count is its dataset's)."""
    if preset.kind == "image":
        return _image(preset.pixels, preset.num_classes)
    return _tokens(preset.vocab_size, preset.num_classes)


def task_shape(cfg: TaskConfig) -> TaskShape:
    if cfg.name not in TASK_SHAPES:
        raise ValueError(f"no shapes known for task {cfg.name!r}; add it to TASK_SHAPES")
    return TASK_SHAPES[cfg.name](cfg)


def zero_batch(shape: TaskShape, rows: int) -> Split:
    """A batch of ``rows`` all-valid rows of zeros with the task's shapes and dtypes."""
    length = shape.length
    return {
        "inputs": np.zeros((rows, length), np.int32 if shape.vocab_size else np.float32),
        "targets": np.zeros((rows, length) if shape.per_position else (rows,), np.int32),
        "mask": np.ones((rows, length), bool),
    }


def abstract_data(cfg: ExperimentConfig) -> Dataset:
    """A ``Dataset`` with the task's metadata whose splits are one batch of zeros each."""
    shape = task_shape(cfg.task)
    batch = zero_batch(shape, cfg.optim.batch_size)
    return Dataset(cfg.task.name, {"train": batch, "test": batch}, shape.vocab_size,
                   shape.num_classes, shape.length)


def abstract_build(cfg: ExperimentConfig):
    """``runner.build.build(cfg)`` on ``abstract_data``: every static check, the model and the
    abstract parameters, no data read or generated (a file-based task's ``data_dir`` is not
    needed)."""

    check_values(cfg)
    devices, _ = mesh_shape(cfg.mesh, jax.device_count())
    check_batch_size(cfg.optim.batch_size, devices)
    check_accumulate(cfg.optim.batch_size, cfg.optim.accumulate, devices)
    check_mixer_options(cfg.model)
    data = abstract_data(cfg)
    model = build_model(cfg, data)
    check_lengths(cfg, model, data.seq_len)
    return Built(cfg, data, model, make_mesh(cfg.mesh), data["train"])


# ---- compiled memory -------------------------------------------------------------------------


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def compiled_bytes(compiled) -> dict[str, int]:
    """``{"arguments", "outputs", "aliased", "temporaries", "peak"}`` of a compiled step."""
    m = compiled.memory_analysis()
    out = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "temporaries": int(m.temp_size_in_bytes),
    }
    out["peak"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"]
    return out


def step_memory(built, *, eval_step: bool = True) -> dict[str, dict[str, int]]:
    """``{"train": compiled_bytes, "eval": compiled_bytes}`` of ``built``'s steps at its batch
    size and length, compiled on abstract arguments (nothing runs)."""

    optimizer = make_optimizer(built.cfg.optim)
    step = train_step_fn(built, optimizer, jax.random.PRNGKey(0))
    batch = _abstract(built.sample)
    args = (built.params_shape, opt_state_shape(built, optimizer), batch, 1)
    result = {"train": compiled_bytes(step.lower(*args).compile())}
    if eval_step:
        compiled = eval_step_fn(built).lower(built.params_shape, batch).compile()
        result["eval"] = compiled_bytes(compiled)
    return result


# ---- what autodiff keeps ---------------------------------------------------------------------


def _constant_output(eqn, index: int) -> bool:
    """Whether output ``index`` of ``eqn`` is a broadcast scalar (``jnp.where``'s zeros, say):
    XLA makes those on the fly, they take no memory."""
    if eqn.primitive.name == "broadcast_in_dim":
        operand = eqn.invars[0]
        return isinstance(operand, Literal) or not operand.aval.shape
    inner = eqn.params.get("jaxpr")
    if eqn.primitive.name in ("jit", "pjit", "closed_call") and inner is not None:
        inner = getattr(inner, "jaxpr", inner)
        producers = {v: (e, i) for e in inner.eqns for i, v in enumerate(e.outvars)}
        var = inner.outvars[index]
        if isinstance(var, Literal):
            return True
        return var in producers and _constant_output(*producers[var])
    return False


def residual_bytes(built) -> int:
    """Bytes of the values JAX's autodiff keeps from the training step's forward pass for its
    backward pass (the VJP's residuals: arguments and broadcast constants left out), traced at
    ``built``'s batch and length without compiling (``accumulate`` ignored: one batch)."""

    stats = stats_fn(built.model, False)

    def loss(params, state, batch):
        return loss_and_accuracy(stats({**params, **state}, batch, jax.random.PRNGKey(0))[0])[0]

    params = built.params_shape
    args = (trainable(params), model_state(params), _abstract(built.sample))
    closed, shapes = jax.make_jaxpr(lambda *a: jax.vjp(loss, *a), return_shape=True)(*args)
    jaxpr = closed.jaxpr
    count = len(jax.tree.leaves(shapes[1]))
    outs = jaxpr.outvars[len(jaxpr.outvars) - count:]
    producers = {v: (e, i) for e in jaxpr.eqns for i, v in enumerate(e.outvars)}
    total, seen = 0, set()
    for var in outs:
        if isinstance(var, Literal) or var in seen or var not in producers:
            continue  # literals, arguments and constants
        seen.add(var)
        if _constant_output(*producers[var]):
            continue
        total += int(np.prod(var.aval.shape)) * var.aval.dtype.itemsize
    return total


# ---- the written estimate --------------------------------------------------------------------

NORM_WIDTH = 1  # the residual stream: each block's input, which its norm's backward pass reads
POSITIONLESS = ("filter",)  # kernels applied to positions, not rows: Hyena's filter network


DEPTHWISE = ("conv_kernel", "filter_kernel")  # (width, channels) short depthwise convolutions


def projection_widths(block: Any) -> int:
    """Sum over a block's linear maps of their input plus output width: each keeps its input for
    its weight gradient, and its output feeds an op that keeps it (a nonlinearity, a scan,
    attention). The maps are the 2-D weight matrices (``kernel``, ``(in, out)``) and the short
    depthwise convolutions (``(width, channels)``: channels in and out)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(block)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if len(leaf.shape) != 2 or any(key.startswith(POSITIONLESS) for key in keys):
            continue
        if keys[-1] == "kernel":
            total += sum(leaf.shape)
        elif keys[-1].endswith(DEPTHWISE):
            total += 2 * leaf.shape[1]
    return total


def feature_widths(name: str, options: dict, d_model: int) -> int:
    """Floats a position of the features a layer's core is computed from and keeps, beyond its
    projections, when a feature map widens them: Based's Taylor map (``seqzoo.ops.feature_maps``)
    turns each head's ``d``-wide q and k into ``1 + d + d^2`` features, ``phi(q)`` and ``phi(k)``
    (``2 x heads x (1 + d + d^2)``; twice for a bidirectional layer), kept where the layer's
    ``keeps_features`` says so (JRT's prefix linear attention). 0 for the other mixers, for
    Based and the linear-attention layers (their op computes the features inside its lean
    region, ``seqzoo.ops.linear_attention.featured``, and keeps q and k) and for maps that keep
    the width (elu, relu: their outputs replace their inputs one for one)."""
    directions = 2 if name.startswith("bi:") else 1
    cls = mixer_entry(name.removeprefix("bi:")).cls
    if not issubclass(cls, LinearAttention) or not cls.keeps_features:
        return 0
    heads = options.get("num_heads", cls.num_heads)
    key_dim = options.get("key_dim", cls.key_dim) or d_model // heads
    features = feature_size(options.get("feature_map", cls.feature_map), key_dim)
    return directions * 2 * heads * features if features > key_dim else 0


def routed_widths(name: str, options: dict, block: Any) -> int:
    """Floats a position of the routed copies a mixture of memories keeps, beyond
    ``projection_widths``: MoM (``seqzoo.layers.mom``) runs its short conv and delta rule on
    packed sequences holding each token once per memory it is routed to, ``copies = topk +
    shared`` rows a position, so the conv's channels in and out count ``copies`` times (there
    once), and each memory's own maps ``W_k^m, W_v^m, W_b^m, W_a^m`` (``(memories, in, out)``
    kernels, which ``projection_widths`` leaves out) keep their input and ``copies`` output
    rows (only the routed ones: ``in + copies x out``). 0 for the other mixers."""
    cls = mixer_entry(name.removeprefix("bi:")).cls
    if not issubclass(cls, MoM):
        return 0
    copies = options.get("topk", cls.topk) + int(options.get("shared_mem", cls.shared_mem))
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(block)[0]:
        key = str(getattr(path[-1], "key", path[-1]))
        if key in cls.MEMORY_MAPS:
            total += leaf.shape[1] + copies * leaf.shape[2]
        elif key.endswith(DEPTHWISE):
            total += (copies - 1) * 2 * leaf.shape[1]
    return total


def activation_factor(built) -> float:
    """Float32 values per position a layer keeps for the backward pass, in units of
    ``d_model``: ``NORM_WIDTH + (projection_widths(block) + feature_widths + routed_widths) /
    d_model``, averaged over the blocks (see the module docstring)."""
    params = built.params_shape["params"]
    blocks = [v for k, v in params.items() if k.startswith("block_")]
    widths = sum(projection_widths(b) for b in blocks)
    model, d_model = built.model, built.cfg.model.d_model
    for i, name in enumerate(model.layer_mixers()):
        options = mixer_options(model.mixer_config, name)
        widths += feature_widths(name, options, d_model)
        widths += routed_widths(name, options, params[f"block_{i}"])
    return NORM_WIDTH + widths / max(len(blocks), 1) / d_model


def activation_estimate(built) -> int:
    """The written estimate of a training step's peak bytes (see the module docstring):
    ``n_layers x microbatch x length x d_model x 4 x activation_factor`` + the head's logits and
    probabilities (``2 x classes`` a position for per-position labels) + ``16 x params``."""

    cfg = built.cfg
    rows = cfg.optim.batch_size // cfg.optim.accumulate
    positions = rows * built.data.seq_len
    layers = cfg.model.n_layers * positions * cfg.model.d_model * 4 * activation_factor(built)
    head = 2 * 4 * built.data.num_classes * (positions if per_position(built.data) else rows)
    return int(layers + head + 16 * built.num_params)


# ---- the out-of-memory error -----------------------------------------------------------------


class OutOfMemory(RuntimeError):
    """XLA ran out of device memory compiling or running a step (see ``out_of_memory``)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is XLA's ``RESOURCE_EXHAUSTED`` (out of device or host memory)."""
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def out_of_memory(cfg: ExperimentConfig, what: str, error: BaseException,
                  compiled=None) -> OutOfMemory:
    """The clear error for XLA's ``error`` while compiling or running ``what`` (e.g. "the
    training step"): the batch, the compiled size when known, and the keys that fix it."""
    o = cfg.optim
    rows = o.batch_size // o.accumulate
    need = ""
    if compiled is not None:
        try:
            need = f"; the compiled step needs {compiled_bytes(compiled)['peak'] / GIB:.2f} GiB"
        except Exception:  # noqa: BLE001 - the size is a hint; the error stands without it
            need = ""
    try:

        devices = mesh_shape(cfg.mesh, jax.device_count())[0]
    except ValueError:
        devices = 1
    larger = next((a for a in range(o.accumulate + 1, o.batch_size + 1)
                   if o.batch_size % a == 0 and (o.batch_size // a) % devices == 0), None)
    if larger:
        fix = (f"Lower optim.batch_size, or keep it and set optim.accumulate={larger} (each batch "
               f"run as {larger} microbatches: the same gradient in about 1/{larger} of the "
               f"activation memory)")
    else:
        fix = ("Lower optim.batch_size or the model's size (model.d_model, model.n_layers): the "
               "microbatches cannot be split further over the devices")
    return OutOfMemory(
        f"out of memory in {what}: batches of optim.batch_size={o.batch_size} rows as "
        f"optim.accumulate={o.accumulate} microbatch(es) of {rows}, model.d_model="
        f"{cfg.model.d_model}, model.n_layers={cfg.model.n_layers}{need}. {fix}; "
        f"`seqzoo bench memory_configs NAME` shows an experiment's compiled size without running "
        f"it. XLA said: {_first_line(error)}"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
