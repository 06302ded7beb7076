"""LoRA adapters on the decoder's linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models", https://arxiv.org/abs/2106.09685):

    y = x W^T + (alpha / r) * (x A^T) B^T,   A [r, in], B [out, r], B = 0 at the start,

so a fresh adapter leaves the model exactly as it was. The adapters are ``nnx.LoRAParam``
variables of the model's ``Linear`` layers (flax's LoRA parameter type: ``nnx.split(model,
nnx.LoRAParam, ...)`` separates them from the frozen base), stored in PEFT's layout and with a
leading ``layers`` axis like every weight of the scanned decoder, so the PEFT export is a rename.
"""

from __future__ import annotations

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models.families import LORA_TARGETS
from jaxalign.models.llama import CausalLM
from jaxalign.models.modules import Linear
from jaxalign.models.quant import QTYPES, check_shape, quantize

INITS = ("default", "gaussian")
FLOAT_BASES = ("float32", "bfloat16", "float16")


def check_spec(spec) -> None:
    """Refuse a ``model.lora`` section (:class:`jaxalign.config.schema.LoraSpec`) that cannot be built, naming the key."""
    if not isinstance(spec.rank, int) or spec.rank <= 0:
        raise JaxalignError(f"config key 'model.lora.rank': must be a positive integer, got {spec.rank!r}")
    if not spec.alpha > 0:
        raise JaxalignError(f"config key 'model.lora.alpha': must be > 0, got {spec.alpha!r}")
    if not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
        raise JaxalignError(f"config key 'model.lora.dropout': must be in [0, 1), got {spec.dropout!r}")
    if spec.init not in INITS:
        raise JaxalignError(f"config key 'model.lora.init': expected one of {', '.join(INITS)}, got {spec.init!r}")
    bad = [t for t in spec.targets if t not in LORA_TARGETS]
    if bad or not spec.targets:
        raise JaxalignError(f"config key 'model.lora.targets': {bad or 'empty'}; expected a non-empty list of "
                            f"{', '.join(LORA_TARGETS)}")
    if spec.base_dtype not in (None, *FLOAT_BASES, *QTYPES):
        raise JaxalignError(f"config key 'model.lora.base_dtype': expected {', '.join(FLOAT_BASES + QTYPES)}, "
                            f"got {spec.base_dtype!r}")


def targeted(model: CausalLM, targets=LORA_TARGETS):
    """``(path, Linear)`` of every decoder linear layer named in ``targets`` (of a
    :class:`~jaxalign.models.heads.ScalarHeadModel`: its backbone's)."""
    layers = model.layers if hasattr(model, "layers") else model.backbone.layers
    return [(path, node) for path, node in nnx.iter_graph(layers)
            if isinstance(node, Linear) and path and path[-1] in targets]


def add_lora(model: CausalLM, spec, *, seed: int = 0) -> CausalLM:
    """Give ``model`` (in place; also returned) an adapter on each ``spec.targets`` layer.

    A is kaiming-uniform (bound ``1/sqrt(in)``, PEFT's default) or normal(0, 1/r)
    (``init: gaussian``), B is zero; adapters are in the model's ``param_dtype``. With
    ``spec.base_dtype`` the base weights are cast to it, or, for ``int8`` / ``nf4`` (QLoRA), every
    decoder ``Linear`` weight is quantised (:mod:`jaxalign.models.quant`; embeddings and norms
    keep their dtype). ``spec.dropout``: PEFT's dropout on the adapters' input in training
    forwards (:mod:`jaxalign.models.lora_dropout`). On a mesh,
    :func:`jaxalign.parallel.shard_model` afterwards places each adapter on the shardings of its
    base weight's logical axes (:mod:`jaxalign.parallel.rules`).
    """
    check_spec(spec)
    dtype = model.config.jnp_param_dtype
    key = jax.random.key(seed)
    if spec.base_dtype in QTYPES:
        quantize_base(model, spec.base_dtype)
    elif spec.base_dtype is not None:
        bd = jnp.dtype(spec.base_dtype)
        base = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda x: x.astype(bd) if jnp.issubdtype(x.dtype, jnp.floating) else x, base))
    for i, (_, lin) in enumerate(targeted(model, spec.targets)):
        n, d_out, d_in = lin.weight.shape
        k = jax.random.fold_in(key, i)
        if spec.init == "gaussian":
            a = jax.random.normal(k, (n, spec.rank, d_in), jnp.float32) / spec.rank
        else:
            bound = 1.0 / math.sqrt(d_in)
            a = jax.random.uniform(k, (n, spec.rank, d_in), jnp.float32, -bound, bound)
        lin.lora_a = nnx.data(nnx.LoRAParam(a.astype(dtype)))
        lin.lora_b = nnx.data(nnx.LoRAParam(jnp.zeros((n, d_out, spec.rank), dtype)))
        lin.lora_scale = float(spec.alpha) / spec.rank
        lin.lora_dropout = float(spec.dropout)
        lin.lora_index = i
    return model


def quantize_base(model: CausalLM, qtype: str) -> CausalLM:
    """Store every decoder ``Linear`` weight of ``model`` quantised to ``qtype`` (in place).

    Deterministic (absmax scales, round-to-nearest), so a resumed run, which reloads the base
    and quantises it again, gets the same base."""
    for path, lin in nnx.iter_graph(model.layers):
        if not isinstance(lin, Linear) or lin.quant is not None:
            continue
        why = check_shape(qtype, lin.weight.shape[-1])
        if why:
            raise JaxalignError(f"config key 'model.lora.base_dtype': {why} (layers.{'.'.join(map(str, path))})")
        qvalue, scale = quantize(lin.weight[...], qtype)
        lin.weight = nnx.Param(qvalue)
        lin.weight_scale = nnx.data(nnx.Param(scale))
        lin.quant = qtype
    return model


def has_lora(params) -> bool:
    """Whether an ``nnx.State`` (or a model) holds LoRA adapters."""
    state = params if isinstance(params, nnx.State) else nnx.state(params)
    return bool(jax.tree.leaves(nnx.filter_state(state, nnx.LoRAParam)))


def split_params(params: nnx.State, also=None) -> tuple[nnx.State, nnx.State]:
    """``(adapters, base)`` of a LoRA model's state; :func:`join_params` undoes it. ``also``: an
    nnx filter of other variables that train beside the adapters (a reward model's score head)."""
    trainable = nnx.LoRAParam if also is None else nnx.Any(nnx.LoRAParam, also)
    return nnx.split_state(params, trainable, ...)


def join_params(base: nnx.State, adapters: nnx.State) -> nnx.State:
    """The full state from :func:`split_params`'s two halves (no copy: a pytree of the same arrays)."""
    return nnx.merge_state(base, adapters)


def strip_lora(model: CausalLM) -> CausalLM:
    """Remove the adapters from ``model`` in place (the base model, adapters switched off)."""
    for _, lin in targeted(model):
        lin.lora_a = lin.lora_b = nnx.data(None)
        lin.lora_scale = 0.0
    return model


def base_graphdef(graphdef, params: nnx.State):
    """The graphdef of the model without adapters: merged with :func:`split_params`'s ``base``
    it is the frozen base model (the reference of DPO and the like: the same weights, no copy)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return nnx.graphdef(strip_lora(nnx.merge(graphdef, abstract)))


def merged_model(model: CausalLM) -> CausalLM:
    """A new model without adapters whose weights are ``W + (alpha/r) B A`` (in float32, cast back
    to W's dtype; a quantised W is dequantised to ``model.param_dtype`` first): the adapted model
    as one plain model, for export."""
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # a separate module tree
    dtype = model.config.jnp_param_dtype
    for _, lin in nnx.iter_graph(out):
        if isinstance(lin, Linear) and lin.quant is not None:
            # QLoRA: the dequantised base, in model.param_dtype (a plain model again).
            lin.weight = nnx.Param(lin.base_weight().astype(dtype))
            lin.weight_scale = nnx.data(None)
            lin.quant = None
    for _, lin in targeted(out):
        if lin.lora_a is None:
            continue
        w = lin.weight[...]
        delta = jnp.einsum("lor,lri->loi", lin.lora_b[...].astype(jnp.float32), lin.lora_a[...].astype(jnp.float32))
        lin.weight[...] = (w.astype(jnp.float32) + lin.lora_scale * delta).astype(w.dtype)
    return strip_lora(out)
