"""The device mesh of a run, ``(data, seq)``, and where arrays live on it.

    batch rows               split over ``data``
    sequence positions       split over ``seq`` (sequence parallelism, ``seqzoo.parallel``)
    params, optimizer state  ``mesh.params``: ``replicated`` on every device, or ``fsdp``

``mesh.seq = 1`` is data parallelism: the steps are jitted over the mesh and XLA inserts the
gradient all-reduce. With ``mesh.seq > 1`` the model runs inside ``shard_map``
(``seqzoo.runner.gradients``); batches are padded at the end to a multiple of ``mesh.seq`` with
``mask=False`` and ignored targets, which leaves every valid position's result unchanged.

``fsdp`` shards each parameter (and its optimizer moments) along its largest dimension that all
the mesh's devices divide (replicated when none does): memory at rest drops by the device count;
the steps gather the parameters for the compute (ZeRO-3 storage, not per-layer gathering).

Over several processes (``seqzoo.runner.distributed``) the mesh holds every process's devices;
a process addresses the rows ``process_rows`` of each batch (those its devices hold, contiguous
when the mesh is laid out process by process, as ``jax.make_mesh`` does) and reads only those
from the data; ``put_batch`` assembles the global batch from them
(``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from seqzoo.config import MeshConfig, check_values
from seqzoo.data import IGNORE_INDEX
from seqzoo.parallel import pad_to_shards

AXES = ("data", "seq")
PARAM_MODES = ("replicated", "fsdp")
PAD_VALUES = {"mask": False, "targets": IGNORE_INDEX}  # other arrays pad with 0


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int]:
    """``(data, seq)`` of ``cfg`` on ``num_devices`` devices, checked; errors name the keys."""
    check_values(cfg, "mesh.")
    if not cfg.data and num_devices % cfg.seq:
        raise ValueError(
            f"mesh.seq={cfg.seq} does not divide the {num_devices} devices; set mesh.data "
            f"too (mesh.data * mesh.seq devices are used)"
        )
    data = cfg.data or num_devices // cfg.seq
    if data * cfg.seq > num_devices:
        raise ValueError(
            f"mesh.data={data} x mesh.seq={cfg.seq} needs {data * cfg.seq} devices; "
            f"there are {num_devices} devices (of all processes)"
        )
    return data, cfg.seq


def make_mesh(cfg: MeshConfig) -> Mesh:
    """The ``(data, seq)`` mesh of the first ``data * seq`` devices (of all processes), laid out by
    ``jax.make_mesh`` for the device topology (a TPU slice's torus: neighbours along ``seq``,
    whose ring and all-gathers carry the sequence-parallel traffic), in order where it has no
    layout for that subset of devices."""
    devices = jax.devices()
    data, seq = mesh_shape(cfg, len(devices))
    chosen = devices[: data * seq]
    try:
        return jax.make_mesh((data, seq), AXES, (AxisType.Auto,) * 2, devices=chosen)
    except (ValueError, NotImplementedError, AssertionError):
        return Mesh(np.array(chosen).reshape(data, seq), AXES)


def describe_devices(mesh: Mesh) -> str:
    """The devices of ``mesh`` for the run header: ``"8 cpu device(s)"``, or with the model where
    it says more than the platform, e.g. ``"1 gpu device(s) (NVIDIA H100 80GB HBM3)"``. Which
    devices JAX takes is set before it starts: ``JAX_PLATFORMS=cpu`` (or ``cuda``, ``tpu``),
    ``CUDA_VISIBLE_DEVICES=0,1``."""
    devices = list(mesh.devices.flat)
    platforms = sorted({d.platform for d in devices})
    kinds = sorted({d.device_kind for d in devices} - set(platforms))
    return f"{len(devices)} {'/'.join(platforms)} device(s)" + (
        f" ({', '.join(kinds)})" if kinds else ""
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def array_spec(ndim: int) -> PartitionSpec:
    """Batch arrays: rows over ``data``, and positions over ``seq`` for ``(rows, length, ...)``."""
    return PartitionSpec("data", "seq") if ndim >= 2 else PartitionSpec("data")


def batch_shardings(batch: dict[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, array_spec(np.ndim(v))) for k, v in batch.items()}


def check_batch_size(batch_size: int, num_devices: int) -> None:
    """Fail, naming the fix, unless the batch splits evenly over the ``data`` devices."""
    if batch_size % num_devices:
        multiple = -(-batch_size // num_devices) * num_devices
        raise ValueError(
            f"optim.batch_size={batch_size} is not divisible by the {num_devices} devices the "
            f"batch is split over; use a multiple of {num_devices} (e.g. "
            f"optim.batch_size={multiple}), set mesh.data, or expose fewer devices (e.g. "
            f"CUDA_VISIBLE_DEVICES)"
        )


def pad_batch(batch: dict[str, np.ndarray], shards: int) -> dict[str, np.ndarray]:
    """Each ``(rows, length, ...)`` array padded at the end to a multiple of ``shards`` positions:
    ``mask`` False, ``targets`` ignored, inputs 0."""
    return {
        k: pad_to_shards(v, shards, PAD_VALUES.get(k, 0)) if v.ndim >= 2 else v
        for k, v in batch.items()
    }


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a ``batch_size``-row batch that this process's devices hold (all of them in
    a single process)."""
    where = NamedSharding(mesh, PartitionSpec("data")).addressable_devices_indices_map(
        (batch_size,)
    )
    spans = sorted({index[0].indices(batch_size)[:2] for index in where.values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(
            f"this process's devices hold the rows {spans} of the batch, not one block: the "
            f"mesh interleaves the processes' devices along data"
        )
    return slice(start, stop)


def put_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, batch_size: int | None = None
) -> dict[str, jax.Array]:
    """This process's rows (``process_rows``) of a ``batch_size``-row batch (None: ``batch`` is
    the whole batch) onto its devices, padded for and split over the mesh: the global arrays
    of the whole batch."""
    batch = pad_batch(batch, mesh.shape["seq"])
    return {
        k: jax.make_array_from_process_local_data(
            where, batch[k], (batch_size or len(batch[k]), *batch[k].shape[1:])
        )
        for k, where in batch_shardings(batch, mesh).items()
    }


def state_shardings(tree: Any, mesh: Mesh, mode: str) -> Any:
    """A ``NamedSharding`` for every array (or shape) of ``tree``, by ``mesh.params`` ``mode``."""

    def sharding(leaf) -> NamedSharding:
        shape = np.shape(leaf)
        fits = [d for d in range(len(shape)) if shape[d] % mesh.size == 0]
        if mode == "replicated" or not fits:
            return replicated(mesh)
        largest = max(fits, key=lambda d: shape[d])
        return NamedSharding(mesh, PartitionSpec(*[None] * largest, AXES))

    return jax.tree.map(sharding, tree)
