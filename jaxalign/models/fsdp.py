"""FSDP weight gathering: within :func:`gathering`, each weight is gathered whole onto every
device right where a forward uses it (each decoder layer's, in the layer scan, one at a time),
so the activations stay split by rows like the batch.

Why: the weights are split over the ``fsdp`` mesh axis along their hidden dimension
(:mod:`jaxalign.parallel.rules`). Left to its sharding propagation, XLA contracted the matmuls
over that split dimension instead: every row's activations were brought to every device,
multiplied in partial sums and all-reduced, so each device held all rows' MLP activations and
``[rows, length, vocab]`` logits (found by ``jaxalign plan``; docs/design-notes.md). Gathering
the weight (what FSDP does) keeps each device's activations to its own rows.

The layout (mesh, how a named weight is split, the batch axes) reaches the layers through a
context read while JAX traces (the jitted train step, the reference forward); outside it (one
device, the sampler, which constrains its own activations) nothing changes. The layout is made
by :func:`jaxalign.parallel.fsdp.traced_with` from the logical-axis rules: this module, below
``jaxalign.parallel`` in the layering, only reads it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable

import jax

_LAYOUT: contextvars.ContextVar = contextvars.ContextVar("jaxalign_fsdp_layout", default=None)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What gathering needs, for a mesh of several devices: the ``mesh``;
    ``spec_of((layer_name, param_name), shape)``, the PartitionSpec of a named parameter (None:
    unknown); ``rows_sharding(ndim, rows)``, the sharding of a batch array (rows split over the
    batch axes, or replicated when they do not divide ``rows``)."""

    mesh: object
    spec_of: Callable
    rows_sharding: Callable


@contextlib.contextmanager
def gathering(layout: Layout | None):
    """Within the block, :func:`whole` gathers weights as ``layout`` says (None: off)."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def whole(w, key=None):
    """``w`` replicated on every device of the mesh in force (an all-gather of its shards);
    ``w`` itself outside :func:`gathering`.

    ``key``: ``(layer name, parameter name)``, e.g. ``("q_proj", "lora_a")``, which the layout
    maps to ``w``'s own sharding (:mod:`jaxalign.parallel.rules`). With it, the gradient
    flowing back is constrained to ``w``'s own sharding (a reduce-scatter), so each layer's weight
    gradient lands split like the weight. Without, the gradient of a gathered weight is whole on
    every device, and the layer scan stacks whole gradients: the Llama-3-8B train step held every
    weight's gradient on every device (32 GiB of temporaries, whatever the micro-batch size).
    """
    layout = _LAYOUT.get()
    if layout is None:
        return w
    from jax.sharding import NamedSharding, PartitionSpec

    spec = None if key is None else layout.spec_of(key, w.shape)
    if spec is None:
        return jax.lax.with_sharding_constraint(w, NamedSharding(layout.mesh, PartitionSpec()))
    return _gather(layout.mesh, spec)(w)


@functools.lru_cache(maxsize=None)
def _gather(mesh, spec):
    """All-gather forward, constrain-to-``spec`` (a reduce-scatter of the partial sums) backward."""
    from jax.sharding import NamedSharding, PartitionSpec

    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, spec)

    @jax.custom_vjp
    def gather(w):
        return jax.lax.with_sharding_constraint(w, replicated)

    def fwd(w):
        return gather(w), None

    def bwd(_, ct):
        ct = jax.lax.with_sharding_constraint(ct, replicated)
        return (jax.lax.with_sharding_constraint(ct, split),)

    gather.defvjp(fwd, bwd)
    return gather


def micro_rows_split(micro):
    """Micro-batches ``[n_micro, m, ...]`` laid out with each micro-batch's ``m`` rows split over
    the batch axes (an all-to-all of the tokens, which are small), not whole micro-batches per
    device; unchanged outside :func:`gathering` or when the batch axes do not divide ``m``.

    Why: the batch arrives split by rows in contiguous blocks, so the reshape to micro-batches
    put micro-batch k on the devices holding rows ``[k m, (k+1) m)`` (one device when there are
    as many micro-batches as devices), and every device then held a whole micro-batch's
    activations (``jaxalign plan``: Llama-3-8B DPO train-step temporaries; docs/design-notes.md).
    """
    layout = _LAYOUT.get()
    if layout is None:
        return micro
    from jax.sharding import NamedSharding, PartitionSpec

    def place(x):
        if x.ndim < 2:
            return x
        rows = layout.rows_sharding(x.ndim - 1, x.shape[1]).spec  # a micro-batch's own layout
        if not any(rows):
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, PartitionSpec(None, *rows)))

    return jax.tree.map(place, micro)


def traced_with(fn, layout: Layout | None):
    """``fn`` traced inside :func:`gathering` with ``layout`` (use
    :func:`jaxalign.parallel.fsdp.traced_with`, which makes it from a mesh)."""
    if layout is None:
        return fn

    @functools.wraps(fn)  # jit names the executable after fn (logs, compile-count checks)
    def gathered(*args, **kwargs):
        with gathering(layout):
            return fn(*args, **kwargs)

    return gathered
