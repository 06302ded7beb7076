"""jaxalign.models.lora: a zero-B adapter is exactly the base model, the adapted forward equals
an independent numpy LoRA forward of one layer and the merged model, the KV-cached decode path
(transposed adapters) equals the full forward, split/join/base_graphdef round trips, bad
specs name their key, and adapters are sharded like their base weight (8 devices = 1 device)."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import forward_logits, parallel as shd
from jaxalign.config.schema import LoraSpec
from jaxalign.errors import JaxalignError
from jaxalign.models import lora
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KVCache
from jaxalign.models.llama import init_model

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
IDS = (np.arange(24).reshape(2, 12) * 7) % 97


def _randomise_b(model, seed=3, scale=0.05):
    """Nonzero B everywhere (a trained adapter), in place."""
    for i, (_, lin) in enumerate(lora.targeted(model)):
        if lin.lora_b is None:
            continue
        b = lin.lora_b[...]
        lin.lora_b[...] = jax.device_put(scale * jax.random.normal(jax.random.key(seed + i), b.shape, b.dtype),
                                         b.sharding)
    return model


def test_zero_b_adapter_is_exactly_the_base_model():
    model = init_model(CFG, seed=0)
    base = np.asarray(model(IDS))
    lora.add_lora(model, LoraSpec(rank=4, alpha=8), seed=1)
    assert lora.has_lora(model)
    np.testing.assert_array_equal(np.asarray(model(IDS)), base)
    # A is not zero: the equality comes from B = 0, not from a dead adapter.
    assert float(jnp.abs(model.layers.self_attn.q_proj.lora_a[...]).max()) > 0.01


def test_one_layer_equals_numpy_lora():
    model = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=12), seed=1))
    lin = model.layers.mlp.up_proj
    w, a, b = (np.asarray(v[...][0], np.float64) for v in (lin.weight, lin.lora_a, lin.lora_b))
    x = np.random.default_rng(0).normal(size=(3, CFG.hidden_size))
    want = x @ w.T + (12 / 4) * (x @ a.T) @ b.T
    graphdef, state = nnx.split(lin)
    one = nnx.merge(graphdef, jax.tree.map(lambda v: v[0], state))  # layer 0's slice
    np.testing.assert_allclose(np.asarray(one(jnp.asarray(x, jnp.float32))), want, atol=1e-5)


def test_merged_model_equals_the_adapted_model_and_has_no_adapters():
    model = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8), seed=1))
    plain = np.asarray(lora.strip_lora(nnx.merge(*nnx.split(model)))(IDS))
    adapted = np.asarray(model(IDS))
    assert np.abs(adapted - plain).max() > 1e-2  # the adapters really change the model
    merged = lora.merged_model(model)
    assert not lora.has_lora(merged)
    np.testing.assert_allclose(np.asarray(merged(IDS)), adapted, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(model(IDS)), adapted)  # the original is untouched


@pytest.mark.parametrize("batch", [1, 16])  # below / above TRANSPOSE_MIN_ROWS: both weight layouts
def test_cached_decode_equals_the_full_forward(batch):
    model = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8, targets=["q_proj", "down_proj"]),
                                       seed=1))
    ids = np.resize(IDS, (batch, 12))
    full = np.asarray(model(ids))
    mask = jnp.ones((batch, 8), jnp.int32)
    logits, cache = model(ids[:, :8], mask, cache=KVCache.init(CFG, batch, 12))
    steps = [np.asarray(logits)]
    for t in range(8, 12):
        logits, cache = model(ids[:, t:t + 1], jnp.ones((batch, 1), jnp.int32), cache=cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_split_join_and_the_base_graphdef():
    model = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=2, targets=["v_proj"]), seed=1))
    graphdef, params = nnx.split(model)
    adapters, base = lora.split_params(params)
    assert sorted("/".join(map(str, p)) for p, _ in nnx.to_flat_state(adapters)) == [
        "layers/self_attn/v_proj/lora_a", "layers/self_attn/v_proj/lora_b"]
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, lora.join_params(base, adapters))(IDS)),
                                  np.asarray(model(IDS)))
    ref = nnx.merge(lora.base_graphdef(graphdef, params), base)
    np.testing.assert_array_equal(np.asarray(ref(IDS)), np.asarray(init_model(CFG, seed=0)(IDS)))
    # The reference shares the base's arrays: no second copy of the weights.
    assert ref.layers.mlp.up_proj.weight[...] is base["layers"]["mlp"]["up_proj"]["weight"][...]


def test_base_dtype_keeps_adapters_in_the_param_dtype():
    model = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, base_dtype="bfloat16"), seed=1)
    assert model.layers.mlp.up_proj.weight[...].dtype == jnp.bfloat16
    assert model.embed_tokens.weight[...].dtype == jnp.bfloat16
    assert model.layers.mlp.up_proj.lora_a[...].dtype == jnp.float32
    assert np.isfinite(np.asarray(model(IDS))).all()


@pytest.mark.parametrize("field, value", [("rank", 0), ("alpha", 0.0), ("dropout", 1.0), ("dropout", -0.1),
                                          ("init", "pissa"), ("targets", ["qkv"]), ("targets", []),
                                          ("base_dtype", "int4")])
def test_bad_spec_names_its_key(field, value):
    with pytest.raises(JaxalignError, match=f"model.lora.{field}"):
        lora.check_spec(LoraSpec(**{field: value}))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_adapters_follow_their_base_weight_on_a_2x2x2_mesh():
    mesh = shd.make_mesh((2, 2, 2))
    single = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4), seed=1))
    ids = np.resize(IDS, (8, 12))  # the batch splits over data x fsdp = 4
    want = np.asarray(single(ids))
    model = init_model(CFG, seed=0)
    shd.shard_model(model, mesh)
    shd.shard_model(lora.add_lora(model, LoraSpec(rank=4), seed=1), mesh)
    _randomise_b(model)
    q = model.layers.self_attn.q_proj
    # q_proj.weight is [layers, heads, embed] -> (None, tensor, fsdp); lora_a [layers, r, embed]
    # takes the input axis, lora_b [layers, heads, r] the output axis.
    assert q.lora_a[...].sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp")
    assert model.layers.mlp.down_proj.lora_b[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    ids = jax.device_put(jnp.asarray(ids), shd.batch_sharding(mesh))
    np.testing.assert_allclose(np.asarray(forward_logits(model, ids)), want, atol=1e-5)
