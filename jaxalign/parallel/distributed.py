"""Multi-process runs: start-up, host copies, process 0, flags agreed by all processes.

One process per host (TPU VM worker, GPU node) or several on one machine (CPU, for testing),
all running the same command. Every process iterates the same data order and collates only its
own rows of each global batch (:class:`jaxalign.data.BatchIterator` with ``process_index`` /
``process_count``); :func:`jaxalign.parallel.batch.global_batch` turns those rows into one
``jax.Array`` over the mesh.
Process 0 alone writes logs, metrics, plots and the exported model; checkpoints are written by
all processes together (Orbax) and restored by all. With one process every function here is
the plain single-process operation.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxalign.errors import JaxalignError

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAXALIGN_COORDINATOR", "JAXALIGN_NUM_PROCESSES", "JAXALIGN_PROCESS_ID")


def local_coordinator() -> str:
    """``localhost:<a free port>``: a ``--coordinator`` for several processes on this machine
    (tests, benchmarks, trying a multi-process run on a laptop)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return f"localhost:{s.getsockname()[1]}"


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


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start multi-host JAX (TPU pod slices, multi-node GPU) from user code; see :func:`initialize`.

    With no arguments on a TPU VM / SLURM / Open MPI, JAX discovers the cluster itself. On CPU,
    pass a localhost ``coordinator_address`` and the process count/id (or set
    ``JAXALIGN_COORDINATOR``, ``JAXALIGN_NUM_PROCESSES``, ``JAXALIGN_PROCESS_ID``).
    """
    initialize(coordinator_address, num_processes, process_id, auto=True)


def is_main() -> bool:
    """True on process 0, the one that writes logs, metrics and exports."""
    return jax.process_index() == 0


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
