"""jaxalign.models.lora_dropout (``model.lora.dropout``, PEFT's lora_dropout): one adapted layer
under a key equals a hand-written ``x W^T + s (mask * x / (1 - p)) A^T B^T``; outside a key, with
rate 0, and in the KV-cached decode nothing is dropped; each layer of the scan and each adapted
Linear draws its own mask."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config.schema import LoraSpec
from jaxalign.models import lora, lora_dropout
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KVCache
from jaxalign.models.llama import init_model

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
IDS = (np.arange(24).reshape(2, 12) * 7) % 97
P = 0.25


def _model(p=P, seed=1):
    model = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=12, dropout=p), seed=seed)
    for i, (_, lin) in enumerate(lora.targeted(model)):  # a trained (nonzero) B
        lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(10 + i), lin.lora_b[...].shape)
    return model


def test_one_layer_equals_the_hand_written_dropout_forward():
    model = _model()
    lin = model.layers.mlp.up_proj
    graphdef, state = nnx.split(lin)
    one = nnx.merge(graphdef, jax.tree.map(lambda v: v[0], state))  # layer 0's slice
    w, a, b = (np.asarray(v[...][0], np.float64) for v in (lin.weight, lin.lora_a, lin.lora_b))
    x = np.random.default_rng(0).normal(size=(5, CFG.hidden_size))
    key = jax.random.key(7)
    with lora_dropout.active(key):
        got = np.asarray(one(jnp.asarray(x, jnp.float32)))
    mask = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, lin.lora_index), 1 - P, x.shape))
    assert 0 < mask.mean() < 1
    want = x @ w.T + (12 / 4) * ((mask * x / (1 - P)) @ a.T) @ b.T
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain = x @ w.T + 3 * (x @ a.T) @ b.T
    assert np.abs(got - plain).max() > 1e-3  # something was dropped
    np.testing.assert_allclose(np.asarray(one(jnp.asarray(x, jnp.float32))), plain, atol=1e-5)  # no key: none


def test_no_key_rate_zero_and_decoding_drop_nothing():
    model = _model()
    plain = np.asarray(model(IDS))
    with lora_dropout.active(jax.random.key(1)):
        dropped = np.asarray(model(IDS))
        # The KV-cached path (sampling) never drops, even inside the context.
        logits, _ = model(IDS, jnp.ones((2, 12), jnp.int32), cache=KVCache.init(CFG, 2, 12))
    assert np.abs(dropped - plain).max() > 1e-3
    np.testing.assert_allclose(np.asarray(logits), plain, atol=1e-5)
    zero = _model(p=0.0)
    with lora_dropout.active(jax.random.key(1)):
        np.testing.assert_array_equal(np.asarray(zero(IDS)), np.asarray(_model(p=0.0)(IDS)))


def test_masks_differ_by_key_layer_and_linear_and_repeat_for_a_key():
    model = _model()

    def run(key):
        with lora_dropout.active(key):
            return np.asarray(jax.jit(lambda m: m(IDS))(model))

    a = run(jax.random.key(1))
    np.testing.assert_array_equal(run(jax.random.key(1)), a)
    assert np.abs(run(jax.random.key(2)) - a).max() > 1e-4
    # Each adapted Linear has its own index (independent masks for q, k, v, ...).
    idx = [lin.lora_index for _, lin in lora.targeted(model)]
    assert len(set(idx)) == len(idx) == 7
    # The two scanned layers use different keys: layer-wise equal to running each layer's slice
    # under split(key, 2)[layer], which differs from using one key for both.
    key = jax.random.key(3)
    graphdef, state = nnx.split(model.layers)
    layers = [nnx.merge(graphdef, jax.tree.map(lambda v, i=i: v[i], state)) for i in range(2)]
    x = model.embed(IDS)
    from jaxalign.models.rope import positions_from_mask, rope_tables

    cos, sin = rope_tables(CFG, positions_from_mask(jnp.ones((2, 12), bool)))
    mask = jnp.tril(jnp.ones((12, 12), bool))[None] & jnp.ones((2, 1, 12), bool)
    h = x
    for layer, k in zip(layers, jax.random.split(key, 2)):
        with lora_dropout.active(k):
            h = layer(h, cos, sin, mask)[0]
    with lora_dropout.active(key):
        got = np.asarray(model.hidden_states(IDS))
    np.testing.assert_allclose(got, np.asarray(model.norm(h)), atol=1e-5)
