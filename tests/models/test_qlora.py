"""jaxalign.models.quant / ``model.lora.base_dtype: int8 | nf4`` (QLoRA): qwix's quantised base
against independent numpy quantisers (int8 symmetric per-channel in closed form; NF4 from the
normal quantiles of Dettmers et al. 2023, rebuilt here with scipy), within their error bounds; a
zero-B QLoRA model equals the float model holding the dequantised weights; the merged
export, the KV-cached decode, split/merge, an 8-device mesh and determinism; bad shapes name
the key."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxalign import forward_logits, parallel as shd
from jaxalign.config.schema import LoraSpec
from jaxalign.errors import JaxalignError
from jaxalign.models import lora, quant
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KVCache
from jaxalign.models.llama import Linear, init_model

# intermediate 128: down_proj's input spans two nf4 blocks of 64; hidden 32 is one (short) block.
CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
IDS = (np.arange(24).reshape(2, 12) * 7) % 97


def nf4_codes() -> np.ndarray:
    """The 16 NF4 values as QLoRA builds them (bitsandbytes' create_normal_map): 8 positive and
    7 negative quantiles of N(0, 1) at offset 0.9677 and zero, normalised to [-1, 1]."""
    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return v / np.abs(v).max()


def np_int8(w: np.ndarray):
    """(dequantised, per-row scale): scale = max|row| / 127.5, q = clip(round(w / scale), -128, 127)."""
    scale = np.abs(w).max(-1, keepdims=True).astype(np.float32) / np.float32(127.5)
    q = np.clip(np.rint(w / scale), -128, 127)
    return (q * scale).astype(np.float32), scale


def np_nf4(w: np.ndarray, block: int):
    """(dequantised, per-block scale): blocks of ``block`` inputs, absmax scale, nearest NF4 code."""
    codes = nf4_codes()
    blocks = w.reshape(w.shape[:-1] + (w.shape[-1] // block, block))
    scale = np.abs(blocks).max(-1, keepdims=True)
    idx = np.abs(blocks[..., None] / scale[..., None] - codes).argmin(-1)
    return (codes[idx] * scale).reshape(w.shape).astype(np.float32), scale


def test_nf4_table_is_qlora_s():
    from qwix._src.core.numerics import get_nf4_buckets

    np.testing.assert_allclose(np.asarray(get_nf4_buckets()), nf4_codes(), atol=2e-7)


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_dequantised_weights_equal_a_numpy_quantiser(qtype):
    w = np.asarray(jax.random.normal(jax.random.key(0), (3, 48, 128), jnp.float32)) * 0.02
    qvalue, scale = quant.quantize(jnp.asarray(w), qtype)
    assert qvalue.dtype == (jnp.int8 if qtype == "int8" else jnp.uint4)
    assert scale.shape == ((3, 48, 1) if qtype == "int8" else (3, 48, 2))
    got = np.asarray(quant.dequantize(qvalue, scale, qtype))
    if qtype == "int8":
        want, s = np_int8(w)
        np.testing.assert_allclose(np.asarray(scale), s, rtol=1e-6)
        bound = s / 2  # round to nearest: half a step
        # Exactly equal except at rounding ties: each row's absmax sits at |w / scale| = 127.5
        # by construction, where XLA's w * (1 / scale) and numpy's w / scale may round to
        # either neighbour (one step apart).
        t = np.abs(w / s)
        tie = np.abs(t - np.floor(t) - 0.5) < 1e-4
        assert tie.sum() <= 2 * w.size // w.shape[-1]
        np.testing.assert_allclose(got[~tie], want[~tie], rtol=0, atol=1e-7)
        assert (np.abs(got - want)[tie] <= np.broadcast_to(s, w.shape)[tie] * 1.0001).all()
    else:
        want, s = np_nf4(w, 64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
        bound = s * np.diff(nf4_codes()).max() / 2  # half the widest gap between codes
        bound = np.repeat(bound[..., 0], 64, axis=-1)
    err = np.abs(got - w)
    assert (err <= bound * (1 + 1e-4)).all()  # (ties: the scale is rounded too)
    assert err.max() > 0  # it really is lossy


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_zero_b_qlora_model_equals_the_dequantised_float_model(qtype):
    ref = init_model(CFG, seed=0)
    for _, lin in nnx.iter_graph(ref.layers):
        if isinstance(lin, Linear):
            lin.weight[...] = quant.dequantize(*quant.quantize(lin.weight[...], qtype), qtype)
    model = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8, base_dtype=qtype), seed=1)
    q = model.layers.mlp.down_proj
    assert q.quant == qtype and q.weight[...].dtype == (jnp.int8 if qtype == "int8" else jnp.uint4)
    assert q.lora_a[...].dtype == jnp.float32 and model.embed_tokens.weight[...].dtype == jnp.float32
    got = np.asarray(model(IDS))
    np.testing.assert_allclose(got, np.asarray(ref(IDS)), rtol=0, atol=1e-6)
    # ... and not the undequantised one: quantisation error is visible in the logits.
    assert np.abs(got - np.asarray(init_model(CFG, seed=0)(IDS))).max() > 1e-4


def _randomise_b(model, seed=3, scale=0.05):
    for i, (_, lin) in enumerate(lora.targeted(model)):
        b = lin.lora_b[...]
        lin.lora_b[...] = jax.device_put(scale * jax.random.normal(jax.random.key(seed + i), b.shape, b.dtype),
                                         b.sharding)
    return model


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_merged_export_split_merge_and_cached_decode(qtype):
    model = _randomise_b(lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8, base_dtype=qtype), seed=1))
    full = np.asarray(model(IDS))
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, state)(IDS)), full)
    adapters, base = lora.split_params(state)
    assert {str(p[-1]) for p, _ in nnx.to_flat_state(base)} >= {"weight", "weight_scale"}
    merged = lora.merged_model(model)
    assert not lora.has_lora(merged) and merged.layers.mlp.up_proj.quant is None
    assert merged.layers.mlp.up_proj.weight[...].dtype == jnp.float32  # model.param_dtype
    np.testing.assert_allclose(np.asarray(merged(IDS)), full, atol=1e-5)
    assert model.layers.mlp.up_proj.quant == qtype  # the original is untouched
    for batch in (1, 16):  # both decode layouts (weights transposed or not)
        ids = np.resize(IDS, (batch, 12))
        want = np.asarray(model(ids))
        logits, cache = model(ids[:, :8], jnp.ones((batch, 8), jnp.int32), cache=KVCache.init(CFG, batch, 12))
        steps = [np.asarray(logits)]
        for t in range(8, 12):
            logits, cache = model(ids[:, t:t + 1], jnp.ones((batch, 1), jnp.int32), cache=cache)
            steps.append(np.asarray(logits))
        np.testing.assert_allclose(np.concatenate(steps, axis=1), want, atol=1e-5)


def test_quantisation_is_deterministic():
    a = lora.add_lora(init_model(CFG, seed=0), LoraSpec(base_dtype="nf4"), seed=1)
    b = lora.add_lora(init_model(CFG, seed=0), LoraSpec(base_dtype="nf4"), seed=1)
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nf4_needs_inputs_in_blocks_of_64():
    cfg = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with pytest.raises(JaxalignError, match=r"model\.lora\.base_dtype.*multiples of 64, got 96.*down_proj"):
        lora.add_lora(init_model(cfg, seed=0), LoraSpec(base_dtype="nf4"))
    lora.add_lora(init_model(cfg, seed=0), LoraSpec(base_dtype="int8"))  # per channel: any size


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_quantised_base_on_a_2x2x2_mesh_equals_one_device(qtype):
    mesh = shd.make_mesh((2, 2, 2))
    spec = LoraSpec(rank=4, base_dtype=qtype)
    single = _randomise_b(lora.add_lora(init_model(CFG, seed=0), spec, seed=1))
    ids = np.resize(IDS, (8, 12))
    want = np.asarray(single(ids))
    model = init_model(CFG, seed=0)
    shd.shard_model(model, mesh)
    shd.shard_model(lora.add_lora(model, spec, seed=1), mesh)
    _randomise_b(model)
    down = model.layers.mlp.down_proj
    # down_proj [layers, embed, mlp] -> (None, fsdp, tensor): the qvalue as the float weight was;
    # its scale [layers, embed, blocks] shards its output axis like the weight.
    assert down.weight[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert down.weight_scale[...].sharding.spec[:2] == (None, "fsdp")
    ids = jax.device_put(jnp.asarray(ids), shd.batch_sharding(mesh))
    np.testing.assert_allclose(np.asarray(forward_logits(model, ids)), want, atol=1e-5)
