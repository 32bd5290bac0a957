"""Everything a run needs before its first step, checked before any compute: the config, the
task's data, the model, the device mesh and the abstract parameters.

Errors name the config key and the fix: a value outside its field's domain (``config.check_values``:
ranges, unknown task or mixer names listing the valid ones ...), bad mixer options (each mixer
built and traced abstractly, ``runner.mixer_options``), an MLP of width 0, a mesh the devices
cannot hold, a batch that does not split over the devices or into ``optim.accumulate`` equal
microbatches, a mixer without a sequence-parallel path on a mesh with ``mesh.seq > 1``, a missing
dataset directory; once the data is built, a sequence longer than a fixed-length mixer or the
position table allows, and anything else the model's abstract ``init`` (``jax.eval_shape``)
refuses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
from jax.sharding import Mesh

from seqzoo.config import ExperimentConfig, check_values
from seqzoo.data import Dataset
from seqzoo.data.dataset import Split
from seqzoo.models import SequenceModel
from seqzoo.models.blocks import mlp_width
from seqzoo.registry import SEQUENCE_PARALLEL_MIXERS, mixer_entry
from seqzoo.runner.experiments import transformer_config
from seqzoo.runner.mixer_options import check_mixer_options
from seqzoo.runner.model import build_model, model_inputs
from seqzoo.runner.sharding import check_batch_size, make_mesh, mesh_shape, state_shardings
from seqzoo.runner.variables import trainable
from seqzoo.tasks import build_task, check_task


@dataclasses.dataclass
class Built:
    """A run's ingredients: config, data, model, device mesh, and a batch to initialise with."""

    cfg: ExperimentConfig
    data: Dataset
    model: SequenceModel
    mesh: Mesh
    sample: Split

    @functools.cached_property
    def params_shape(self) -> Any:
        """The parameters' shapes, dtypes and shardings (``init`` traced, not run)."""
        args = (model_inputs(self.sample), self.sample["mask"])
        shapes = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), *args)
        return jax.tree.map(
            lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
            shapes,
            self.shardings(shapes),
        )

    @functools.cached_property
    def num_params(self) -> int:
        return param_count(self.params_shape)

    @functools.cached_property
    def transformer_params(self) -> int | None:
        """Parameters of the task's Transformer config on this data (LRA's budget), if any."""
        ref = transformer_config(self.cfg)
        if ref is None:
            return None
        model = build_model(ref, self.data)
        args = (model_inputs(self.sample), self.sample["mask"])
        return param_count(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args))

    def params_line(self) -> str:
        """``params: N`` and, with a Transformer config for the task, the ratio to it."""
        line = f"params: {self.num_params:,}"
        if self.transformer_params:
            ratio = self.num_params / self.transformer_params
            line += f" (ratio {ratio:.3f} to the transformer config of this task)"
        return line

    def shardings(self, tree: Any) -> Any:
        """Where the arrays of ``tree`` (parameters, optimizer state) live: ``mesh.params``."""
        return state_shardings(tree, self.mesh, self.cfg.mesh.params)

    def init_params(self, key: jax.Array) -> Any:
        """Freshly initialised parameters, placed as ``mesh.params`` says."""
        init = jax.jit(self.model.init, out_shardings=self.shardings(self.params_shape))
        return init(key, model_inputs(self.sample), self.sample["mask"])


def param_count(variables: dict[str, Any]) -> int:
    """The number of trainable parameters in a variables tree of arrays or shapes (batch
    norm's running averages are not parameters)."""
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(trainable(variables)))


def check_config(cfg: ExperimentConfig) -> None:
    """Static checks: every value in its domain, the task's constraints and data directory, the
    mixer options, devices (no data is read or generated, nothing is computed; the mixers are
    traced abstractly)."""
    check_values(cfg)
    m = cfg.model
    width = mlp_width(m.d_model, m.mlp, m.mlp_ratio)
    if m.mlp != "none" and width < 1:
        raise ValueError(
            f"model.mlp_ratio={m.mlp_ratio} gives the {m.mlp} MLP of model.d_model={m.d_model} "
            f"a hidden width of {width}; raise model.mlp_ratio or set model.mlp=none"
        )
    check_task(cfg.task)
    mixers = m.mixer.split(",")
    data, seq = mesh_shape(cfg.mesh, jax.device_count())
    check_batch_size(cfg.optim.batch_size, data)
    check_accumulate(cfg.optim.batch_size, cfg.optim.accumulate, data)
    unsupported = sorted(set(mixers) - SEQUENCE_PARALLEL_MIXERS)
    if seq > 1 and unsupported:
        raise ValueError(
            f"mesh.seq={seq} splits sequences over devices, which mixer(s) {unsupported} do "
            f"not support; use mesh.seq=1 or mixers among {sorted(SEQUENCE_PARALLEL_MIXERS)}"
        )
    if seq > 1 and cfg.model.norm == "batch":
        raise ValueError(
            f"mesh.seq={seq} splits sequences over devices, and model.norm='batch' would need "
            f"its statistics summed over them, which is not implemented; use model.norm='layer' "
            f"or 'rms', or mesh.seq=1"
        )
    check_mixer_options(m)


def check_accumulate(batch_size: int, accumulate: int, devices: int = 1) -> None:
    """Fail, naming the keys and values that work, unless ``accumulate`` splits a batch into
    equal microbatches that split evenly over the ``devices`` the rows are spread over."""
    if batch_size % accumulate:
        divisors = [a for a in range(1, batch_size + 1) if batch_size % a == 0]
        raise ValueError(
            f"optim.accumulate={accumulate} does not divide optim.batch_size={batch_size} into "
            f"equal microbatches; use one of its divisors ({', '.join(map(str, divisors))}) or "
            f"change optim.batch_size"
        )
    rows = batch_size // accumulate
    if rows % devices:
        fits = [a for a in range(1, batch_size + 1)
                if batch_size % a == 0 and (batch_size // a) % devices == 0]
        raise ValueError(
            f"optim.accumulate={accumulate} makes microbatches of optim.batch_size / "
            f"optim.accumulate = {rows} rows, which do not split over the {devices} devices the "
            f"rows are spread over; use optim.accumulate in {', '.join(map(str, fits))}"
        )


def check_lengths(
    cfg: ExperimentConfig, model: SequenceModel, seq_len: int, key: str = "task.seq_len"
) -> None:
    """Fail unless every fixed-length mixer and the position table cover ``seq_len``, the longest
    split's length (a synthetic task's test split may be longer: ``task.test_seq_len``)."""
    if cfg.model.max_length and seq_len > cfg.model.max_length:
        raise ValueError(
            f"{key}={seq_len} exceeds model.max_length={cfg.model.max_length} (the "
            f"learned position table); set model.max_length={seq_len} or 0 (no positions)"
        )
    for name in model.layer_mixers():
        entry = mixer_entry(name.removeprefix("bi:"))
        attr = entry.cls.info.max_length_attr
        if attr is None:
            continue
        options = model._config_for(name)
        limit = options.get(attr, getattr(entry.cls, attr))
        if seq_len > limit:
            raise ValueError(
                f"{key}={seq_len} exceeds {attr}={limit} of mixer {name!r} (the size of "
                f"its fixed mixing matrix); set it in model.mixer_options, e.g. "
                f"model.mixer_options='{{\"{attr}\": {seq_len}}}', or shorten {key}"
            )


def build(cfg: ExperimentConfig) -> Built:
    """Check ``cfg``, build its data and model, and trace the model's ``init`` abstractly."""
    check_config(cfg)
    data = build_task(cfg.task)
    model = build_model(cfg, data)
    longest = max(split["inputs"].shape[1] for split in data.splits.values())
    check_lengths(cfg, model, longest, "task.seq_len" if longest == data.seq_len else
                  "task.test_seq_len")
    mesh = make_mesh(cfg.mesh)
    sample = {k: v[: cfg.optim.batch_size] for k, v in data["train"].items()}
    built = Built(cfg, data, model, mesh, sample)
    _ = built.params_shape  # traces init: bad mixer options fail here, before any compute
    return built
