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


def whole(w, axes=None):
    """``w`` replicated on every device of the mesh in force (an all-gather of its shards);
    ``w`` itself outside :func:`gathering`.

    ``axes``: ``w``'s logical axes (:mod:`jaxalign.parallel.rules`). With them, the gradient
    flowing back is constrained to ``w``'s own sharding (a reduce-scatter), so each layer's weight
    gradient lands split like the weight. Without, the gradient of a gathered weight is whole on
    every device, and the layer scan stacks whole gradients: the Llama-3-8B train step held every
    weight's gradient on every device (32 GiB of temporaries, whatever the micro-batch size).
    """
    mesh = _MESH.get()
    if mesh is None:
        return w
    from jax.sharding import NamedSharding, PartitionSpec

    if axes is None:
        return jax.lax.with_sharding_constraint(w, NamedSharding(mesh, PartitionSpec()))
    from jaxalign.parallel.rules import current_rules, logical_to_spec

    spec = logical_to_spec(axes, w.shape, mesh, current_rules())
    return _gather(mesh, spec)(w)


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


def weight_axes(name: str | None) -> tuple | None:
    """Logical axes of the ``weight`` of a layer named ``name`` (``q_proj``, ``embed_tokens``,
    ``score``, ...; without the stacked ``layers`` axis), or None for an unknown name."""
    from jaxalign.parallel.rules import _PARAM_AXES

    return None if name is None else _PARAM_AXES.get((name, "weight"))


def adapter_axes(axes: tuple | None, which: str, transposed: bool = False) -> tuple | None:
    """Logical axes of a LoRA factor of a weight with ``axes`` (as stored: ``[out, in]``, or
    ``[in, out]`` when ``transposed``): ``lora_a`` ``[r, in]`` follows the input axis, ``lora_b``
    ``[out, r]`` the output axis, the rank is replicated (as :mod:`jaxalign.parallel.rules`)."""
    if axes is None:
        return None
    out_ax, in_ax = axes[::-1] if transposed else axes
    if which == "a":
        return (in_ax, None) if transposed else (None, in_ax)
    return (None, out_ax) if transposed else (out_ax, None)


def micro_rows_split(micro):
    """Micro-batches ``[n_micro, m, ...]`` laid out with each micro-batch's ``m`` rows split over
    the batch axes (an all-to-all of the tokens, which are small), not whole micro-batches per
    device; unchanged outside :func:`gathering` or when the batch axes do not divide ``m``.

    Why: the batch arrives split by rows in contiguous blocks, so the reshape to micro-batches
    put micro-batch k on the devices holding rows ``[k m, (k+1) m)`` (one device when there are
    as many micro-batches as devices), and every device then held a whole micro-batch's
    activations (``jaxalign plan``: Llama-3-8B DPO train-step temporaries; docs/design-notes.md).
    """
    mesh = _MESH.get()
    if mesh is None:
        return micro
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxalign.parallel.batch import batch_axes, batch_shards

    axes, shards = batch_axes(mesh), batch_shards(mesh)

    def place(x):
        if not axes or x.ndim < 2 or x.shape[1] % shards:
            return x
        spec = PartitionSpec(None, axes if len(axes) > 1 else axes[0], *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(place, micro)


def traced_with(fn, mesh):
    """``fn`` traced inside :func:`gathering` over ``mesh``."""
    if mesh is None or mesh.devices.size <= 1:
        return fn

    @functools.wraps(fn)  # jit names the executable after fn (logs, compile-count checks)
    def gathered(*args, **kwargs):
        with gathering(mesh):
            return fn(*args, **kwargs)

    return gathered
