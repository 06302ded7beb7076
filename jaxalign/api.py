"""The public entry points: load, save and run a model. For users; nothing inside jaxalign
imports this module (the layers below import :mod:`jaxalign.io.load` directly)."""

from __future__ import annotations

from functools import partial

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.io.load import load_model, load_tokenizer, save_model

__all__ = ["forward_logits", "load_model", "load_tokenizer", "save_model"]


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask):
    model = nnx.merge(graphdef, state)
    return model(input_ids, attention_mask)


def forward_logits(model, input_ids, attention_mask=None) -> jax.Array:
    """Logits ``[batch, seq, vocab]`` for ``input_ids [batch, seq]``.

    Right (or left) padding is supported: positions come from ``attention_mask`` (1 = real
    token), and padded keys are never attended to. Jitted once per shape.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise JaxalignError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise JaxalignError(
            f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}"
        )
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, input_ids, attention_mask)
