"""Multi-process runs: start-up, per-process batches as global arrays, host copies, process 0.

One process per host (TPU VM worker, GPU node) or several on one machine (CPU, for testing),
all running the same command. Every process iterates the same data order and collates only its
own rows of each global batch (:class:`jaxalign.data.BatchIterator` with ``process_index`` /
``process_count``); :func:`global_batch` turns those rows into one ``jax.Array`` over the mesh.
Process 0 alone writes logs, metrics, plots and the exported model; checkpoints are written by
all processes together (Orbax) and restored by all. With one process every function here is
the plain single-process operation.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.errors import JaxalignError

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAXALIGN_COORDINATOR", "JAXALIGN_NUM_PROCESSES", "JAXALIGN_PROCESS_ID")


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise JaxalignError(f"environment variable {name}: expected an integer, got {v!r}") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               timeout_s: int = 300) -> bool:
    """Join a multi-process run before anything touches a JAX device; True if one was started.

    ``coordinator`` (``host:port`` of process 0), ``num_processes`` and ``process_id`` default
    to ``JAXALIGN_COORDINATOR`` / ``JAXALIGN_NUM_PROCESSES`` / ``JAXALIGN_PROCESS_ID``. Give all
    three (several processes on one machine, multi-node GPU without a scheduler), or ``auto``
    to let JAX detect them (Cloud TPU VMs, SLURM, Open MPI). Nothing given and not ``auto``, or
    ``num_processes == 1``: a single-process run, nothing to start. On CPU, cross-process
    collectives go through gloo.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if not auto and all(v is None for v in given.values()):
        return False
    if num_processes == 1 and process_id in (None, 0):
        return False
    if not auto:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise JaxalignError(f"multi-process run: {', '.join(missing)} missing (give --coordinator, "
                                "--num-processes and --process-id together, or --distributed to "
                                "auto-detect on a TPU VM / SLURM / Open MPI)")
    if num_processes is not None and num_processes < 1:
        raise JaxalignError(f"--num-processes: must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise JaxalignError(f"--process-id: {process_id} is not in [0, {num_processes})")
    if coordinator is not None and ":" not in coordinator:
        raise JaxalignError(f"--coordinator: expected host:port, got {coordinator!r}")
    # gloo is JAX's default for CPU collectives today; set it so a changed default cannot
    # silently leave a CPU run without cross-process collectives. TPU/GPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if auto and "should be defined" in first:
            raise JaxalignError("--distributed: JAX found no TPU VM, SLURM or Open MPI cluster to join ("
                                f"{first}); give --coordinator, --num-processes and --process-id") from None
        raise JaxalignError(f"could not start the multi-process run (coordinator {coordinator}, "
                            f"process {process_id} of {num_processes}): {first}") from None
    return True


def is_main() -> bool:
    """True on process 0, the one that writes logs, metrics and exports."""
    return jax.process_index() == 0


def _rows_of_process(sharding: NamedSharding, shape: tuple) -> tuple[int, int] | None:
    """The contiguous ``[start, stop)`` of dim 0 this process's devices hold, or None when the
    devices hold a non-contiguous set of rows."""
    spans = sorted({(s[0].indices(shape[0])[:2]) for s in
                    sharding.addressable_devices_indices_map(shape).values()})
    start, stop = spans[0]
    for a, b in spans[1:]:
        if a > stop:
            return None
        stop = max(stop, b)
    return start, stop


def global_batch(batch: dict, mesh) -> dict:
    """``{name: [rows, ...] numpy}`` -> ``{name: jax.Array}`` with the batch dim over
    ``('data', 'fsdp')`` (replicated when those axes do not divide it).

    One process: ``batch`` is the whole batch (``jax.device_put``). Several: ``batch`` holds this
    process's rows ``[i*b, (i+1)*b)`` of a global batch of ``b * process_count`` rows. When this
    process's devices hold exactly those rows (the usual layout) the array is built from them
    alone; otherwise (a replicated batch, or a mesh whose rows cross processes) the rows are
    first gathered from all processes.
    """
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def sharding(rows, ndim):
        if rows % n:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))

    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, sharding(x.shape[0], x.ndim)), batch)
    pc, pi = jax.process_count(), jax.process_index()
    out, gather = {}, {}
    for k, x in batch.items():
        x = np.asarray(x)
        shape = (x.shape[0] * pc,) + x.shape[1:]
        sh = sharding(shape[0], x.ndim)
        if _rows_of_process(sh, shape) == (pi * x.shape[0], (pi + 1) * x.shape[0]):
            out[k] = jax.make_array_from_process_local_data(sh, x, shape)
        else:
            gather[k] = (x, sh)
    if gather:
        from jax.experimental import multihost_utils

        full = multihost_utils.process_allgather({k: x for k, (x, _) in gather.items()}, tiled=True)
        for k, (_, sh) in gather.items():
            out[k] = jax.make_array_from_callback(full[k].shape, sh, lambda idx, a=full[k]: a[idx])
    return {k: out[k] for k in batch}


def to_host(tree):
    """Numpy copies of every array of ``tree``, whole on every process (all processes must call:
    several processes gather the shards that other processes hold)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def sum_over_processes(value: float) -> float:
    """Sum of a host number over all processes (all must call); the number itself with one."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return float(np.sum(multihost_utils.process_allgather(np.float64(value))))


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (all must call)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))
