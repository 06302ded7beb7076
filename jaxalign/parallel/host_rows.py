"""The experience phase of an online algorithm on several processes: whole batches on the host.

Every process loads only its own rows of each prompt batch, as for the offline algorithms. The
experience phase then works on the *whole* global batch, identically on every process:

1. :func:`gather_rows`: the prompt rows of all processes, in global order, on every process;
2. sampling (and the reference / reward-model forwards) run collectively on the global mesh,
   their inputs placed by rows (:func:`place_rows`) and their outputs brought back whole
   (:func:`jaxalign.parallel.distributed.to_host`);
3. a text reward (decoding is cheap, the reward may not be: a verifier, a sandbox) scores only
   this process's rows and the scores are gathered (:func:`jaxalign.rewards.parts_over_processes`);
4. everything that needs the whole batch (RAFT's global ranking, GRPO/RLOO groups, online-DPO
   pairs, dynamic sampling, reward metrics) sees the same whole arrays on every process, so it
   is global and identical by construction, and equal to a one-process run;
5. :func:`own_rows`: the train batch is cut back to this process's block of rows, which
   :func:`jaxalign.parallel.batch.global_batch` reassembles into the same global batch.

Why gather rather than keep everything process-local: the host-side steps (ranking, pairing,
filters, dynamic sampling) then need no cross-process version of their own, and the arrays
gathered are token ids and per-row numbers, small next to the sampling itself.

With one process every function here returns its input.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxalign.errors import JaxalignError

_MESSAGE_BYTES = 1024


def multi() -> bool:
    """True in a run of several processes."""
    return jax.process_count() > 1


def gather_rows(tree):
    """This process's rows of a batch (``{name: [rows, ...]}``, any pytree of arrays) -> the whole
    batch on every process, rows of process 0 first (the order of a one-process run)."""
    if not multi():
        return tree
    from jax.experimental import multihost_utils

    local = jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(local, tiled=True))


def own_rows(tree, what: str = "train batch"):
    """The inverse of :func:`gather_rows`: this process's contiguous block of the rows of every
    array (scalars are kept). Each array's row count must split evenly over the processes."""
    if not multi():
        return tree
    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            return x
        block = own_slice(x.shape[0])
        if block is None:
            name = jax.tree_util.keystr(path)
            raise JaxalignError(f"{what} {name}: {x.shape[0]} rows do not split over {jax.process_count()} "
                                "processes; make train.batch_size (x samples kept per prompt) a multiple of the "
                                "process count")
        return x[block]

    return jax.tree_util.tree_map_with_path(one, tree)


def own_slice(n: int) -> slice | None:
    """This process's block of ``n`` rows, or None when ``n`` does not split over the processes
    (then every process works on all rows)."""
    pc = jax.process_count()
    if n % pc:
        return None
    per = n // pc
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def place_rows(x, mesh):
    """A whole host array (the same on every process) -> a global ``jax.Array`` split by rows
    over ``mesh`` (:func:`jaxalign.parallel.batch.batch_sharding`)."""
    from jaxalign.parallel.batch import batch_sharding

    x = np.asarray(x)
    return jax.device_put(x, batch_sharding(mesh, x.ndim, rows=x.shape[0]))


def on_mesh(fn, mesh):
    """``fn(params, *arrays)`` (jitted, on ``mesh``) called with whole host arrays: several
    processes place them by rows and get the output back whole. One process: ``fn`` itself (still
    a jitted function: ``jaxalign plan`` lowers it)."""
    if mesh is None or not multi():
        return fn

    def call(params, *arrays):
        from jaxalign.parallel.distributed import to_host

        return to_host(fn(params, *(None if a is None else place_rows(a, mesh) for a in arrays)))

    return call


def raise_together(error: BaseException | None) -> None:
    """All processes call this after work that may fail on some of them (a reward on its own
    rows). If any failed, every process raises: the one that failed its own error, the others
    one line naming the first failing process and its message. No process is left waiting in the
    next collective for one that has stopped."""
    if not multi():
        if error is not None:
            raise error
        return
    from jax.experimental import multihost_utils

    buf = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    if error is not None:
        msg = (str(error).strip().splitlines() or [type(error).__name__])[0].encode()[:_MESSAGE_BYTES]
        buf[0] = 1
        buf[1:1 + len(msg)] = np.frombuffer(msg, np.uint8)
    all_ = np.asarray(multihost_utils.process_allgather(buf))
    failed = np.flatnonzero(all_[:, 0])
    if not failed.size:
        return
    if error is not None:
        raise error
    i = int(failed[0])
    msg = bytes(all_[i, 1:]).rstrip(b"\0").decode(errors="replace")
    raise JaxalignError(f"process {i}: {msg}")


def together(fn):
    """``fn()`` on every process, its failure agreed by all (:func:`raise_together`)."""
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 (re-raised by raise_together, on every process)
        error = e
    raise_together(error)
    return result
