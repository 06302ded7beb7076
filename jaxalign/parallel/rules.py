"""Logical-axis rules and parameter shardings.

Every parameter has logical axis names (``vocab``, ``embed``,
``heads``, ``kv_heads``, ``mlp``, ``layers``, ``norm``); a rules table maps those to mesh axes.
A dimension whose size the mesh axes do not divide is replicated instead (tiny test models and
SmolLM2's 3 KV heads stay valid on any mesh).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign.errors import JaxalignError
from jaxalign.parallel.mesh import MESH_AXES

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

def make_rules(overrides=None) -> dict:
    """The rules table: :data:`DEFAULT_RULES` with ``overrides`` applied.

    ``overrides`` is a mapping ``{logical: mesh_axis | [mesh_axes] | None}`` or, as MaxText's
    ``logical_axis_rules``, a list of ``[logical, mesh_axis | [mesh_axes] | None]`` pairs (the
    ``mesh.logical_axis_rules`` config key). Every name is checked: an unknown logical or mesh
    axis is an error that names it.
    """
    rules = dict(DEFAULT_RULES)
    if not overrides:
        return rules
    key = "mesh.logical_axis_rules"
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise JaxalignError(f"config key {key!r}: expected [logical_axis, mesh_axes] pairs, got {item!r}")
            pairs.append(tuple(item))
    for logical, target in pairs:
        if logical not in DEFAULT_RULES:
            raise JaxalignError(f"config key {key!r}: unknown logical axis {logical!r} "
                                f"(known: {', '.join(DEFAULT_RULES)})")
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        for t in targets:
            if t not in MESH_AXES:
                raise JaxalignError(f"config key {key!r}: {logical!r} -> unknown mesh axis {t!r} "
                                    f"(mesh axes: {', '.join(MESH_AXES)})")
        if len(set(targets)) != len(targets):
            raise JaxalignError(f"config key {key!r}: {logical!r} names a mesh axis twice")
        rules[logical] = targets[0] if len(targets) == 1 else (targets or None)
    return rules


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jaxalign_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(overrides=None):
    """Within the block, every sharding function called without ``rules`` uses
    ``make_rules(overrides)`` (a run's ``mesh.logical_axis_rules``), as flax's
    ``logical_axis_rules`` context does; the loop and ``jaxalign.algorithms.build_job`` enter
    it, so model placement, batches and the sampler agree without passing the table around."""
    token = _ACTIVE.set(make_rules(overrides))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_rules() -> dict:
    """The rules table in force (:func:`axis_rules`), else :data:`DEFAULT_RULES`."""
    active = _ACTIVE.get()
    return DEFAULT_RULES if active is None else active


# Parameter-name suffix -> logical axes (without the leading 'layers' axis of stacked blocks).
_PARAM_AXES = {
    ("embed_tokens", "weight"): ("vocab", "embed"),
    ("lm_head", "weight"): ("vocab", "embed"),
    ("norm", "weight"): ("norm",),
    ("input_layernorm", "weight"): ("norm",),
    ("post_attention_layernorm", "weight"): ("norm",),
    ("pre_feedforward_layernorm", "weight"): ("norm",),  # Gemma
    ("post_feedforward_layernorm", "weight"): ("norm",),  # Gemma
    ("q_norm", "weight"): ("norm",),  # Qwen3, Gemma 3: over head_dim
    ("k_norm", "weight"): ("norm",),
    ("o_proj", "bias"): ("embed",),  # Qwen3, Gemma with attention_bias
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
# LoRA adapters follow their base weight [out, in]: lora_a [r, in] shards as its input axis,
# lora_b [out, r] as its output axis; the rank axis is replicated.
for (_mod, _name), _axes in list(_PARAM_AXES.items()):
    if _name == "weight" and _mod.endswith("_proj"):
        _PARAM_AXES[(_mod, "lora_a")] = (None, _axes[1])
        _PARAM_AXES[(_mod, "lora_b")] = (_axes[0], None)
        # QLoRA scales [out, in / block] (jaxalign.models.quant): the weight's axes; a dimension
        # the mesh does not divide (int8's single column) replicates.
        _PARAM_AXES[(_mod, "weight_scale")] = _axes


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
    rules = current_rules() if rules is None else rules
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


def shard_model(model, mesh: Mesh, rules=None):
    """Move an existing nnx model's parameters onto their shardings (in place); returns it."""
    from flax import nnx

    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
