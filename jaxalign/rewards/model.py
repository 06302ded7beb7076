"""Scoring completions with a reward model (a ``ScalarHeadModel`` exported by ``jaxalign rm``)."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.parallel import host_rows


def reward_model_scorer(path: str, tokenizer=None, mesh=None):
    """``score(tokens [N, S], attention_mask [N, S]) -> np.ndarray [N]``: the reward model's
    scalar at the last real token (from the mask, so left padding and trailing padding are fine)."""
    from jaxalign.io.hf import load_hf

    try:
        model = load_hf(path, scalar_head=True, mesh=mesh)
    except FileNotFoundError:
        raise JaxalignError(f"config key 'reward.path': {path}: no reward model there") from None
    if tokenizer is not None and model.config.vocab_size < len(tokenizer):
        raise JaxalignError(f"reward model {path}: vocabulary of {model.config.vocab_size} tokens is smaller "
                            f"than the policy tokenizer's {len(tokenizer)}; the two must share a tokenizer")
    graphdef, params = nnx.split(model)

    @jax.jit
    def score(params, tokens, mask):
        return nnx.merge(graphdef, params)(tokens, mask)

    on_mesh = host_rows.on_mesh(score, mesh)  # several processes: placed by rows, brought back whole

    def scorer(tokens, mask):
        return np.asarray(jax.device_get(on_mesh(params, tokens, mask)))

    scorer.params = params
    return scorer
