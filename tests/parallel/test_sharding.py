"""Sharded models on 8 simulated CPU devices give the 1-device numbers, and really are sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import forward_logits, init_model, load_model, save_model
from jaxalign import parallel as shd
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

CFG = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True)
MESHES = [(2, 2, 2), (1, 8, 1), (1, 1, 8)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    model = init_model(CFG, seed=1)
    save_model(model, d)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, (8, 12))
    lens = rng.integers(3, 13, 8)
    mask = (np.arange(12)[None] < lens[:, None]).astype(np.int32)
    ref = np.asarray(forward_logits(model, ids, mask))
    return d, ids, mask, ref


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_equals_single_device(saved, shape):
    d, ids, mask, ref = saved
    mesh = shd.make_mesh(shape)
    model = load_model(d, mesh=mesh)
    bs = shd.batch_sharding(mesh)
    got = forward_logits(model, jax.device_put(ids, bs), jax.device_put(mask, bs))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


@pytest.mark.parametrize("shape", MESHES)
def test_parameters_really_sharded(saved, shape):
    d = saved[0]
    mesh = shd.make_mesh(shape)
    model = load_model(d, mesh=mesh)
    data, fsdp, tensor = shape
    q = model.layers.self_attn.q_proj.weight[...]  # [layers, heads*hd=32, embed=32]
    expect = P(None, "tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None)
    assert q.sharding == NamedSharding(mesh, expect)
    # Each device holds only its block of the array.
    shard_shape = q.addressable_shards[0].data.shape
    assert shard_shape == (2, 32 // tensor, 32 // fsdp)
    # Vocab 96 splits over 8 or 2 tensor devices; embed over fsdp.
    emb = model.embed_tokens.weight[...]
    assert emb.addressable_shards[0].data.shape == (96 // tensor, 32 // fsdp)


def test_indivisible_dims_replicate():
    mesh = shd.make_mesh((1, 1, 8))
    spec = shd.logical_to_spec(("layers", "kv_heads", "embed"), (30, 3, 576), mesh)
    assert spec == P(None, None, None)
    spec = shd.logical_to_spec(("vocab", "embed"), (49152, 576), mesh)
    assert spec == P("tensor", None)


def test_shard_model_in_place(saved):
    d, ids, mask, ref = saved
    mesh = shd.make_mesh((2, 4, 1))
    model = shd.shard_model(load_model(d), mesh)
    assert model.layers.mlp.up_proj.weight[...].sharding.spec == P(None, None, "fsdp")
    np.testing.assert_allclose(np.asarray(forward_logits(model, ids, mask)), ref, atol=1e-5)


def test_mesh_config_errors():
    with pytest.raises(JaxalignError, match="devices"):
        shd.make_mesh((3, 1, 1))
    with pytest.raises(JaxalignError, match="unknown axis"):
        shd.make_mesh({"model": 8})
    assert shd.make_mesh({"tensor": 2}).shape == {"data": 1, "fsdp": 4, "tensor": 2}


@pytest.mark.parametrize("arch", ["Qwen3ForCausalLM", "Gemma3ForCausalLM"])
def test_sharded_family_forward_equals_single_device(arch, tmp_path):
    """q/k norms, Gemma's extra norms, o_proj bias and mixed sliding/global layers shard too."""
    cfg = CFG.replace(architecture=arch, sliding_window=4, layer_types=("sliding_attention", "full_attention"),
                      rope_local_theta=10.0 if arch == "Gemma3ForCausalLM" else None)
    model = init_model(cfg, seed=2)
    save_model(model, tmp_path)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (8, 12))
    mask = (np.arange(12)[None] < rng.integers(1, 13, 8)[:, None]).astype(np.int32)
    ref = np.asarray(forward_logits(model, ids, mask))
    mesh = shd.make_mesh((2, 2, 2))
    sharded = load_model(tmp_path, mesh=mesh)
    bs = shd.batch_sharding(mesh)
    got = forward_logits(sharded, jax.device_put(ids, bs), jax.device_put(mask, bs))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
