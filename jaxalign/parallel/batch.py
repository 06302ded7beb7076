"""The one batch-sharding rule: the leading (batch) dimension over the mesh axes that the
``batch`` logical axis maps to (``('data', 'fsdp')`` by default), the rest replicated; a batch
those axes do not divide is replicated. Every batch placed on the mesh (train and eval steps,
the sampler's prompts, multi-process global batches, the memory preflight's abstract batches)
goes through here.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign.parallel.rules import current_rules


def batch_axes(mesh: Mesh, rules=None) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over (the ``batch`` rule)."""
    target = (current_rules() if rules is None else rules).get("batch")
    return (target,) if isinstance(target, str) else tuple(target or ())


def batch_shards(mesh: Mesh, rules=None) -> int:
    """How many ways the batch dimension is split (the rows of a batch must be a multiple)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=None, rows: int | None = None) -> NamedSharding:
    """Sharding of one batch array of rank ``ndim``: dim 0 over :func:`batch_axes`, the rest
    replicated; replicated when ``rows`` is given and the batch axes do not divide it."""
    axes = batch_axes(mesh, rules)
    if not axes or (rows is not None and rows % batch_shards(mesh, rules)):
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0], *([None] * (ndim - 1))))


def batch_shardings(batch, mesh: Mesh, rules=None):
    """:func:`batch_sharding` of every leaf of a batch pytree (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: batch_sharding(mesh, x.ndim, rules, rows=x.shape[0]), batch)


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


def global_batch(batch: dict, mesh, rules=None) -> dict:
    """``{name: [rows, ...] numpy}`` -> ``{name: jax.Array}`` placed by :func:`batch_sharding`.

    One process: ``batch`` is the whole batch (``jax.device_put``). Several: ``batch`` holds this
    process's rows ``[i*b, (i+1)*b)`` of a global batch of ``b * process_count`` rows. When this
    process's devices hold exactly those rows (the usual layout) the array is built from them
    alone; otherwise (a replicated batch, or a mesh whose rows cross processes) the rows are
    first gathered from all processes.
    """
    def sharding(rows, ndim):
        return batch_sharding(mesh, ndim, rules, rows=rows)

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
