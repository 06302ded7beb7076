"""Device mesh, logical-axis rules and parameter shardings.

One mesh with axes ``('data', 'fsdp', 'tensor')``; its shape is the only thing that differs
between a laptop and a pod slice. Every parameter has logical axis names (``vocab``, ``embed``,
``heads``, ``kv_heads``, ``mlp``, ``layers``, ``norm``); a rules table maps those to mesh axes.
A dimension whose size the mesh axes do not divide is replicated instead (tiny test models and
SmolLM2's 3 KV heads stay valid on any mesh).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign.errors import JaxalignError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None for replicated).
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "seq": None,
}

# Parameter-name suffix -> logical axes (without the leading 'layers' axis of stacked blocks).
_PARAM_AXES = {
    ("embed_tokens", "weight"): ("vocab", "embed"),
    ("lm_head", "weight"): ("vocab", "embed"),
    ("norm", "weight"): ("norm",),
    ("input_layernorm", "weight"): ("norm",),
    ("post_attention_layernorm", "weight"): ("norm",),
    ("q_proj", "weight"): ("heads", "embed"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "weight"): ("kv_heads", "embed"),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "weight"): ("kv_heads", "embed"),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "weight"): ("embed", "heads"),
    ("gate_proj", "weight"): ("mlp", "embed"),
    ("up_proj", "weight"): ("mlp", "embed"),
    ("down_proj", "weight"): ("embed", "mlp"),
    ("score", "weight"): (None, "embed"),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. ``-1`` on one axis takes the remaining devices (default: all on 'fsdp')."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        dims = [self.data, self.fsdp, self.tensor]
        if dims.count(-1) > 1:
            raise JaxalignError("mesh: at most one of data/fsdp/tensor may be -1")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if n_devices % known:
                raise JaxalignError(f"mesh: {n_devices} devices do not divide by {known}")
            dims[dims.index(-1)] = n_devices // known
        if math.prod(dims) != n_devices:
            raise JaxalignError(
                f"mesh: data*fsdp*tensor = {math.prod(dims)} but {n_devices} devices are available"
            )
        return tuple(dims)


def make_mesh(config: MeshConfig | Mapping | Sequence[int] | None = None, devices=None) -> Mesh:
    """Build the ``('data', 'fsdp', 'tensor')`` mesh over ``devices`` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        unknown = set(config) - set(MESH_AXES)
        if unknown:
            raise JaxalignError(f"mesh: unknown axis {sorted(unknown)[0]!r} (axes: {MESH_AXES})")
        config = MeshConfig(**config)
    elif not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def param_logical_axes(path: Sequence[str], ndim: int) -> tuple:
    """Logical axes of a parameter from its path, e.g. ``('layers','self_attn','q_proj','weight')``."""
    key = tuple(str(p) for p in path[-2:])
    axes = _PARAM_AXES.get(key)
    if axes is None:
        raise KeyError(f"no logical axes for parameter {'.'.join(map(str, path))}")
    if "layers" in (str(p) for p in path):
        axes = ("layers",) + axes
    if len(axes) != ndim:
        raise ValueError(f"parameter {'.'.join(map(str, path))}: {ndim} dims, axes {axes}")
    return axes


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping | None = None) -> P:
    """PartitionSpec for ``axes`` under ``rules``; dims not divisible by their mesh axes replicate."""
    rules = DEFAULT_RULES if rules is None else rules
    spec, used = [], set()
    for name, size in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        # A mesh axis may appear once per spec, and a size-1 axis is pointless.
        targets = tuple(t for t in targets if t not in used and mesh.shape[t] > 1)
        n = math.prod(mesh.shape[t] for t in targets)
        if not targets or size % n:
            spec.append(None)
            continue
        used.update(targets)
        spec.append(targets[0] if len(targets) == 1 else targets)
    return P(*spec)


def param_sharding(path, shape, mesh: Mesh, rules=None) -> NamedSharding:
    """NamedSharding of one parameter."""
    return NamedSharding(mesh, logical_to_spec(param_logical_axes(path, len(shape)), shape, mesh, rules))


def path_names(path) -> tuple[str, ...]:
    """Plain names of a pytree key path into an ``nnx.State`` (drops the Variable's ``value``)."""
    names = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name == "value" and isinstance(k, jax.tree_util.GetAttrKey):
            continue
        names.append(str(name))
    return tuple(names)


def state_shardings(state, mesh: Mesh, rules=None):
    """A pytree of NamedShardings matching an ``nnx.State`` of parameters (abstract or concrete)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: param_sharding(path_names(path), x.shape, mesh, rules), state
    )


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=None) -> NamedSharding:
    """Sharding of a batch array: first dim over ('data', 'fsdp'), the rest replicated."""
    rules = DEFAULT_RULES if rules is None else rules
    batch = rules["batch"]
    return NamedSharding(mesh, P(batch, *([None] * (ndim - 1))))


def shard_model(model, mesh: Mesh, rules=None):
    """Move an existing nnx model's parameters onto their shardings (in place); returns it."""
    from flax import nnx

    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start multi-host JAX (TPU pod slices, multi-node GPU); see :func:`jaxalign.distributed.initialize`.

    With no arguments on a TPU VM / SLURM / Open MPI, JAX discovers the cluster itself. On CPU,
    pass a localhost ``coordinator_address`` and the process count/id (or set
    ``JAXALIGN_COORDINATOR``, ``JAXALIGN_NUM_PROCESSES``, ``JAXALIGN_PROCESS_ID``).
    """
    from jaxalign.distributed import initialize

    initialize(coordinator_address, num_processes, process_id, auto=True)
