"""FSDP weight gathering: within :func:`gathering`, each weight is gathered whole onto every
device right where a forward uses it (each decoder layer's, in the layer scan, one at a time),
so the activations stay split by rows like the batch.

Why: the weights are split over the ``fsdp`` mesh axis along their hidden dimension
(:mod:`jaxalign.parallel.rules`). Left to its sharding propagation, XLA contracted the matmuls
over that split dimension instead: every row's activations were brought to every device,
multiplied in partial sums and all-reduced, so each device held all rows' MLP activations and
``[rows, length, vocab]`` logits (found by ``jaxalign plan``; docs/design-notes.md). Gathering
the weight (what FSDP does) keeps each device's activations to its own rows.

The mesh reaches the layers through a context read while JAX traces (the jitted train step,
the reference forward); outside it (one device, the sampler, which constrains its own
activations) nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax

_MESH: contextvars.ContextVar = contextvars.ContextVar("jaxalign_fsdp_mesh", default=None)


@contextlib.contextmanager
def gathering(mesh):
    """Within the block, :func:`whole` gathers weights over ``mesh`` (None or one device: off)."""
    token = _MESH.set(mesh if mesh is not None and mesh.devices.size > 1 else None)
    try:
        yield
    finally:
        _MESH.reset(token)


def whole(w):
    """``w`` replicated on every device of the mesh in force (an all-gather of its shards);
    ``w`` itself outside :func:`gathering`."""
    mesh = _MESH.get()
    if mesh is None:
        return w
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.lax.with_sharding_constraint(w, NamedSharding(mesh, PartitionSpec()))


def traced_with(fn, mesh):
    """``fn`` traced inside :func:`gathering` over ``mesh``."""
    if mesh is None or mesh.devices.size <= 1:
        return fn

    @functools.wraps(fn)  # jit names the executable after fn (logs, compile-count checks)
    def gathered(*args, **kwargs):
        with gathering(mesh):
            return fn(*args, **kwargs)

    return gathered
