"""Blocked causal attention (``jaxalign.models.attention.CAUSAL_BLOCK``): each block of queries attends only to the
keys before its end, which must give the dense attention's logits and gradients, with padding,
packed segments, shared prefixes, a sliding window and a logit soft-cap, and under remat."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import attention
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model

CFG = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _inputs(packed: bool):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 13)), jnp.int32)
    attn = jnp.asarray([[1] * 13, [1] * 9 + [0] * 4], jnp.int32)
    if not packed:
        return dict(input_ids=ids, attention_mask=attn)
    seg = jnp.asarray([[5] * 3 + [1] * 4 + [2] * 6, [1] * 6 + [2] * 3 + [0] * 4], jnp.int32)
    pre = jnp.asarray([[0] * 3 + [5] * 10, [0] * 13], jnp.int32)
    pos = jnp.asarray([[0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 0, 1, 2] + [0] * 4], jnp.int32)
    return dict(input_ids=ids, attention_mask=attn, segment_ids=seg, prefix_ids=pre, positions=pos)


def _logits_and_grad(cfg, inputs, remat, block, monkeypatch):
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", block)
    graphdef, state = nnx.split(init_model(cfg, seed=3))

    def loss(state):
        logits = nnx.merge(graphdef, state)(remat=remat, **inputs)
        w = inputs["attention_mask"][..., None]
        return jnp.sum(jnp.where(w > 0, jax.nn.log_softmax(logits.astype(jnp.float32)), 0.0)[..., :7]), logits

    (_, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(logits), g


@pytest.mark.parametrize("packed,window,cap,remat", [
    (False, None, None, False),
    (True, None, None, "dots"),
    (True, 5, 30.0, False),
    (False, 4, None, True),
])
def test_blocked_equals_dense(packed, window, cap, remat, monkeypatch):
    cfg = CFG.replace(sliding_window=window)
    if cap:  # a Gemma 2 setting
        cfg = cfg.replace(architecture="Gemma2ForCausalLM", attn_logit_softcapping=cap, hidden_act="gelu_pytorch_tanh")
    inputs = _inputs(packed)
    dense, g_dense = _logits_and_grad(cfg, inputs, remat, 0, monkeypatch)
    got, g = _logits_and_grad(cfg, inputs, remat, 4, monkeypatch)  # 13 slots: 4 blocks, the last of 1
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    np.testing.assert_allclose(got[real], dense[real], atol=2e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_dense)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def _attention_dots(block, s, monkeypatch):
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", block)
    q = jnp.ones((1, s, 2, 2, 8))
    k = jnp.ones((1, s, 2, 8))
    mask = jnp.tril(jnp.ones((s, s), bool))[None]
    jaxpr = jax.make_jaxpr(lambda q, k: attention.attend(q, k, k, mask, score_div=1.0, cap=None))(q, k)
    return str(jaxpr).count("dot_general")


def test_blocking_applies_only_over_one_block(monkeypatch):
    """Two dots a block of queries: the equality above compares two different programs."""
    assert _attention_dots(0, 13, monkeypatch) == 2
    assert _attention_dots(4, 13, monkeypatch) == 8
    assert _attention_dots(16, 13, monkeypatch) == 2  # one block: dense
