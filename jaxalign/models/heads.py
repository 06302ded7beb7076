"""Scalar heads on the causal-LM backbone: reward model and value model (critic).

The score is read at the **last real token**, found from the attention mask (never from token
values, so pad == EOS cannot hide it). The head is ``score.weight [1, hidden]`` with no bias,
the layout of transformers' ``*ForSequenceClassification``, so a trained reward model exports
as one.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import CausalLM
from jaxalign.models.modules import Linear


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of the last 1 in each row of ``attention_mask [b, s]`` (left or right padding)."""
    s = attention_mask.shape[-1]
    return jnp.max(jnp.where(attention_mask.astype(bool), jnp.arange(s), -1), axis=-1).clip(0)


class ScalarHeadModel(nnx.Module):
    """A backbone plus a linear ``hidden -> 1`` head.

    ``model(ids, mask)`` gives one score per sequence ``[b]`` (reward model);
    ``model.token_values(ids, mask)`` gives one value per token ``[b, s]`` (critic).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, backbone: CausalLM | None = None):
        self.backbone = backbone if backbone is not None else CausalLM(config, rngs=rngs)
        self.score = Linear(config.hidden_size, 1, bias=False, dtype=config.jnp_dtype,
                            param_dtype=config.jnp_param_dtype, rngs=rngs, name="score")
        self.config = config

    def token_values(self, input_ids, attention_mask=None, *, remat: bool | str = False) -> jax.Array:
        h = self.backbone.hidden_states(input_ids, attention_mask, remat=remat)
        return self.score(h)[..., 0].astype(jnp.float32)

    def __call__(self, input_ids, attention_mask=None, *, remat: bool | str = False) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        values = self.token_values(input_ids, attention_mask, remat=remat)
        idx = last_token_index(attention_mask)
        return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]


def scalar_head_from_lm(lm: CausalLM, seed: int = 0) -> ScalarHeadModel:
    """Wrap an existing LM (e.g. the SFT policy) with a freshly initialised head."""
    return ScalarHeadModel(lm.config, rngs=nnx.Rngs(seed), backbone=lm)
