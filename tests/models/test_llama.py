"""CausalLM against transformers' PyTorch implementations (the independent reference)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxalign import forward_logits, init_model, load_model, save_model
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import KVCache

from tests.models.hf_fixtures import CASES, make_hf_model, max_err_on_real, right_padded_batch

torch = pytest.importorskip("torch")

LENS = [11, 7, 4]


def _batch(vocab, seed=0):
    return right_padded_batch(vocab, LENS, seed)


def _max_err(a, b):
    return max_err_on_real(a, b, LENS)


@pytest.fixture(scope="module", params=sorted(CASES))
def hf_pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = make_hf_model(request.param, d)
    return request.param, d, ref


def test_logits_match_transformers_right_padded(hf_pair):
    kind, d, ref = hf_pair
    model = load_model(d)
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(forward_logits(model, ids, mask))
    assert got.shape == want.shape
    assert _max_err(got, want) < 1e-4


def test_round_trip_through_transformers(hf_pair, tmp_path):
    """jaxalign save -> transformers load -> the same logits."""
    transformers = pytest.importorskip("transformers")
    kind, d, ref = hf_pair
    model = load_model(d)
    out = save_model(model, tmp_path / "export")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = _batch(model.config.vocab_size, seed=1)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        got = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert _max_err(got, want) < 1e-5
    assert type(back).__name__ == type(ref).__name__


def test_features_change_the_output(tmp_path):
    """The parity tests can fail: RoPE scaling and the sliding window really alter logits."""
    base = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=500000.0)
    ids, mask = _batch(97)
    plain = np.asarray(forward_logits(init_model(base), ids, mask))
    scaled = base.replace(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    windowed = base.replace(sliding_window=3)
    assert np.abs(np.asarray(forward_logits(init_model(scaled), ids, mask)) - plain).max() > 1e-4
    assert np.abs(np.asarray(forward_logits(init_model(windowed), ids, mask)) - plain).max() > 1e-4


def test_kv_cache_decode_equals_full_forward():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    model = init_model(cfg, seed=3)
    prompt = jnp.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    pmask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    new = jnp.array([[9, 10, 11], [12, 13, 14]])
    full_ids = jnp.concatenate([prompt, new], 1)
    full_mask = jnp.concatenate([pmask, jnp.ones_like(new)], 1)
    want = np.asarray(model(full_ids, full_mask))
    cache = KVCache.init(cfg, 2, 8)
    logits, cache = model(prompt, pmask, cache=cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 2:], want[:, 2:5], atol=1e-5)
    for t in range(3):
        logits, cache = model(new[:, t:t + 1], jnp.ones((2, 1), jnp.int32), cache=cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], want[:, 5 + t], atol=1e-5)
    assert int(cache.index) == 8


@pytest.mark.parametrize("transpose", [False, True])
def test_decode_weight_layouts_equal_full_forward(transpose):
    """Both layouts of ``unstacked_layers`` ([out, in] as stored, [in, out] transposed) decode
    the same logits as the full forward."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True)
    model = init_model(cfg, seed=4)
    layers = model.unstacked_layers(transpose=transpose)
    assert layers[0].mlp.up_proj.weight.shape == ((32, 48) if transpose else (48, 32))
    ids = jnp.asarray(np.random.default_rng(2).integers(1, 64, (2, 7)))
    want = np.asarray(model(ids, jnp.ones_like(ids)))
    cache = KVCache.init(cfg, 2, 7)
    hidden, cache = model.hidden_states(ids[:, :4], jnp.ones((2, 4), jnp.int32), cache=cache, layers=layers)
    got = [np.asarray(model.logits_from_hidden(hidden))]
    for t in range(4, 7):
        hidden, cache = model.hidden_states(ids[:, t:t + 1], jnp.ones((2, 1), jnp.int32), cache=cache, layers=layers)
        got.append(np.asarray(model.logits_from_hidden(hidden)))
    np.testing.assert_allclose(np.concatenate(got, 1), want, atol=1e-5)


def _decode_logits(model, prompt, pmask, new, max_len):
    cache = KVCache.init(model.config, prompt.shape[0], max_len)
    logits, cache = model(prompt, pmask, cache=cache)
    out = [np.asarray(logits, np.float32)]
    for t in range(new.shape[1]):
        logits, cache = model(new[:, t:t + 1], jnp.ones((new.shape[0], 1), jnp.int32), cache=cache)
        out.append(np.asarray(logits, np.float32))
    return np.concatenate(out, 1), cache


def test_bfloat16_kv_cache_decode_is_as_close_to_float32_as_the_forward():
    """bfloat16 compute decodes from a float32 cache on CPU (``cache_dtype``): its logits are no
    further from the float32 model than the bfloat16 full forward's are."""
    kw = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    m32 = init_model(ModelConfig(**kw), seed=5)
    m16 = init_model(ModelConfig(**kw, dtype="bfloat16"), seed=5)
    rng = np.random.default_rng(1)
    prompt = jnp.asarray(rng.integers(1, 64, (3, 6)))
    pmask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]])
    new = jnp.asarray(rng.integers(1, 64, (3, 5)))
    full_ids, full_mask = jnp.concatenate([prompt, new], 1), jnp.concatenate([pmask, jnp.ones_like(new)], 1)
    want = np.asarray(m32(full_ids, full_mask))
    fwd16 = np.asarray(m16(full_ids, full_mask), np.float32)
    dec16, cache = _decode_logits(m16, prompt, pmask, new, 11)
    assert cache.k[0].dtype == jnp.float32 and cache.k[0].shape == (3, 2, 16, 11)
    real = np.asarray(full_mask, bool)
    err_fwd = np.abs(fwd16 - want)[real].max()
    err_dec = np.abs(dec16 - want)[real].max()
    assert 0 < err_fwd < 0.05 and err_dec <= 1.5 * err_fwd, (err_dec, err_fwd)
    # and decoding really used the cache: a wrong slot would be far off
    np.testing.assert_allclose(dec16[real], want[real], atol=0.05)


def test_bfloat16_close_to_float32(tmp_path):
    make_hf_model("llama", tmp_path)
    ids, mask = _batch(97)
    f32 = np.asarray(forward_logits(load_model(tmp_path), ids, mask))
    bf = load_model(tmp_path, dtype="bfloat16")
    assert bf.embed_tokens.weight[...].dtype == jnp.bfloat16
    b16 = np.asarray(forward_logits(bf, ids, mask)).astype(np.float32)
    assert _max_err(b16, f32) < 0.05
    assert _max_err(b16, f32) > 0  # really computed in bf16


def test_layers_are_scanned_not_unrolled():
    """Compile cost is flat in depth: the HLO has one loop body, not one block per layer."""
    def hlo_size(layers):
        cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        import flax.nnx as nnx
        g, s = nnx.split(init_model(cfg))
        f = jax.jit(lambda s, x: nnx.merge(g, s)(x))
        return len(f.lower(s, jnp.zeros((1, 4), jnp.int32)).as_text())

    assert hlo_size(8) < 1.2 * hlo_size(2)
