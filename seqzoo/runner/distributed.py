"""One run over many processes (``jax.distributed``): which launch, and what the processes agree on.

A run over ``N`` processes is one program: every process builds the same config, data and model,
the ``(data, seq)`` mesh spans the devices of all of them (``sharding.make_mesh``) and each
process places only its own rows of every batch on its own devices (``sharding.put_batch``).
Process 0 alone writes the run directory's own files (lock, config, metrics, resumes, summary)
and logs; orbax checkpoints are written and restored by all processes together (each writes
its shards), so a run saved by ``N`` processes resumes on any other number. The run directory
must be on a file system every process sees.

How the processes find each other (``launch``), first match wins:

* explicit ``--coordinator HOST:PORT --num-processes N --process-id I`` (or
  ``JAX_COORDINATOR_ADDRESS`` with the two flags);
* under ``srun`` with ``SLURM_NTASKS > 1``: JAX's SLURM detection (coordinator on the first
  node, one process per task);
* on a TPU slice of several hosts (``TPU_WORKER_HOSTNAMES`` lists more than one, or a
  multi-slice ``MEGASCALE_COORDINATOR_ADDRESS``): JAX's TPU detection;
* otherwise one process, ``jax.distributed`` not started.

On CPU the processes' collectives go through gloo (``jax_cpu_collectives_implementation``). A
process that dies stops the others: the coordination service misses its heartbeats (or loses
the coordinator's socket) and aborts every other process with "the JAX distributed service
detected fatal errors ... another task died" within ``heartbeat_timeout`` seconds.

Decisions one process takes alone (a signal received, a time budget spent, a failure to set up
the run directory) are shared with ``agree`` before anyone acts on them, so that all processes
stop at the same step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils


def launch(
    env: Mapping[str, str],
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> dict | None:
    """The arguments of ``jax.distributed.initialize`` for this launch (see the module docstring),
    ``{}`` to let JAX detect the cluster, or None for a single process."""
    explicit = (coordinator, num_processes, process_id) != (None, None, None)
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    if explicit:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"a multi-process launch needs --coordinator HOST:PORT, --num-processes and "
                f"--process-id together; missing {', '.join(missing)}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process-id={process_id} must be in [0, --num-processes={num_processes})"
            )
        return {"coordinator_address": coordinator, "num_processes": num_processes,
                "process_id": process_id}
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
        return {}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return {}
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout: int = 30,
) -> bool:
    """Start ``jax.distributed`` as ``launch`` says (before anything else uses JAX's devices);
    whether this is a multi-process run."""
    kwargs = launch(os.environ, coordinator, num_processes, process_id)
    if kwargs is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout)
    return True


def is_main() -> bool:
    """Whether this process writes the run directory's own files and logs (process 0)."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process must call this at the same point;
    one process: ``flag`` itself, no communication)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (one process: nothing)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_values(tree):
    """The values of a tree of (global) arrays on every process's host, as numpy arrays; arrays
    split over several processes are gathered (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
