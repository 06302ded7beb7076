"""Qwen3 and Gemma 2/3 (text) on the shared decoder, against transformers' PyTorch models."""

import json

import numpy as np
import pytest

import jax.numpy as jnp

from jaxalign import forward_logits, init_model, load_model, save_model
from jaxalign.errors import JaxalignError
from jaxalign.io.hf import read_config
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import KVCache

from tests.models.hf_fixtures import FAMILY_CASES, make_hf_model, max_err_on_real, right_padded_batch

torch = pytest.importorskip("torch")

LENS = [11, 7, 1]  # right-padded, longer than the windows (4, 5), and a length-1 row


def _batch(vocab, seed=0):
    return right_padded_batch(vocab, LENS, seed)


def _max_err(a, b):
    return max_err_on_real(a, b, LENS)


def _ref_logits(ref, ids, mask):
    with torch.no_grad():
        return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.fixture(scope="module", params=sorted(FAMILY_CASES))
def hf_pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = make_hf_model(request.param, d)
    return request.param, d, ref


def test_logits_match_transformers_right_padded(hf_pair):
    kind, d, ref = hf_pair
    model = load_model(d)
    ids, mask = _batch(model.config.vocab_size)
    want = _ref_logits(ref, ids, mask)
    got = np.asarray(forward_logits(model, ids, mask))
    assert got.shape == want.shape
    assert _max_err(got, want) < 1e-4


def test_config_read_as_transformers_has_it(hf_pair):
    kind, d, ref = hf_pair
    cfg, want = load_model(d).config, ref.config
    assert cfg.architecture == type(ref).__name__
    types = getattr(want, "layer_types", None)
    assert list(cfg.layer_types) == list(types)
    assert cfg.tie_word_embeddings == want.tie_word_embeddings
    if kind.startswith("gemma"):
        assert cfg.query_pre_attn_scalar == want.query_pre_attn_scalar
        assert cfg.final_logit_softcapping == want.final_logit_softcapping
        assert cfg.attn_logit_softcapping == want.attn_logit_softcapping
    if kind.startswith("gemma3"):
        rp = want.rope_parameters
        assert cfg.rope_theta == rp["full_attention"]["rope_theta"]
        assert cfg.rope_local_theta == rp["sliding_attention"]["rope_theta"]
    if kind == "gemma3_pattern":  # transformers' 5:1 default
        assert cfg.sliding_layers == (True,) * 5 + (False, True)


def test_export_loads_in_transformers_with_the_same_logits(hf_pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    kind, d, ref = hf_pair
    out = save_model(load_model(d), tmp_path / "export")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(back).__name__ == type(ref).__name__
    ids, mask = _batch(ref.config.vocab_size, seed=1)
    assert _max_err(_ref_logits(back, ids, mask), _ref_logits(ref, ids, mask)) < 1e-6
    # and it reads back into the same config
    assert read_config(out) == load_model(d).config


@pytest.mark.parametrize("arch", ["Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_num_params_counts_the_family_pieces(arch):
    import flax.nnx as nnx
    import jax

    cfg = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, architecture=arch,
                      attention_bias=True)
    state = nnx.state(nnx.eval_shape(lambda: init_model(cfg)), nnx.Param)
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(state))


def test_family_features_change_the_output():
    """The parity tests can fail: each Gemma/Qwen3 piece really alters the logits."""
    base = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                       architecture="Gemma2ForCausalLM", hidden_act="gelu_pytorch_tanh",
                       layer_types=("sliding_attention", "full_attention", "sliding_attention"),
                       query_pre_attn_scalar=8.0, rope_theta=100.0)
    ids, mask = _batch(97)
    plain = np.asarray(forward_logits(init_model(base), ids, mask))
    variants = [
        base.replace(attn_logit_softcapping=0.05),
        base.replace(final_logit_softcapping=0.01),
        base.replace(query_pre_attn_scalar=1.0),
        base.replace(layer_types=("full_attention",) * 3),
        base.replace(hidden_act="silu"),
        base.replace(architecture="Gemma3ForCausalLM", rope_local_theta=10.0),
    ]
    for v in variants:
        assert _max_err(np.asarray(forward_logits(init_model(v), ids, mask)), plain) > 1e-5, v


def test_decode_sliding_layers_attend_exactly_the_window(tmp_path):
    """KV-cached decoding: a sliding layer reads only the last ``sliding_window`` slots, a global
    layer reads them all (layers of the gemma2 case: sliding, full, sliding; window 5)."""
    make_hf_model("gemma2", tmp_path)
    model = load_model(tmp_path)
    assert model.config.sliding_layers == (True, False, True)
    ids = jnp.asarray(np.random.default_rng(3).integers(1, 97, (1, 13)))
    one = jnp.ones((1, 1), jnp.int32)
    _, cache = model(ids[:, :12], jnp.ones((1, 12), jnp.int32), cache=KVCache.init(model.config, 1, 13))
    base = np.asarray(model(ids[:, 12:], one, cache=cache)[0])  # query slot 12 sees slots 8..12

    def corrupted(layer, slot):
        k, v = list(cache.k), list(cache.v)
        k[layer] = k[layer].at[..., slot].set(3.0)
        v[layer] = v[layer].at[:, :, slot].set(3.0)
        return np.asarray(model(ids[:, 12:], one, cache=cache.replace(k=tuple(k), v=tuple(v)))[0])

    for layer in (0, 2):
        np.testing.assert_array_equal(corrupted(layer, 7), base)  # just outside the window
        assert np.abs(corrupted(layer, 8) - base).max() > 1e-6  # its oldest slot
    assert np.abs(corrupted(1, 0) - base).max() > 1e-6  # the global layer sees slot 0


def test_decode_equals_full_forward_past_the_window(tmp_path):
    make_hf_model("gemma3_pattern", tmp_path)
    model = load_model(tmp_path)
    ids = jnp.asarray(np.random.default_rng(4).integers(1, 97, (2, 12)))
    pmask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    full_mask = jnp.concatenate([pmask, jnp.ones((2, 7), jnp.int32)], 1)
    want = np.asarray(model(ids, full_mask))
    logits, cache = model(ids[:, :5], pmask, cache=KVCache.init(model.config, 2, 12))
    got = [np.asarray(logits)]
    for t in range(5, 12):
        logits, cache = model(ids[:, t:t + 1], jnp.ones((2, 1), jnp.int32), cache=cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, 1)
    real = np.asarray(full_mask, bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


@pytest.mark.parametrize("arch,model_type", [
    ("Gemma3ForConditionalGeneration", "gemma3"),  # vision tower
    ("Gemma3Model", "gemma3"),  # the multimodal backbone, not Gemma3ForCausalLM's
    ("Qwen3MoeForCausalLM", "qwen3_moe"),
    ("Qwen3VLForConditionalGeneration", "qwen3_vl"),
])
def test_unsupported_architectures_are_one_line_errors(arch, model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": [arch], "model_type": model_type, "vocab_size": 97, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}))
    with pytest.raises(JaxalignError) as e:
        read_config(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"unsupported architecture {arch!r}" in msg and "config.json" in msg


def test_bad_layer_types_and_bidirectional_are_one_line_errors():
    cfg = dict(architectures=["Gemma2ForCausalLM"], vocab_size=97, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(JaxalignError, match="layer_types must list 2 entries"):
        ModelConfig.from_hf_dict({**cfg, "layer_types": ["sliding_attention"]})
    with pytest.raises(JaxalignError, match="use_bidirectional_attention"):
        ModelConfig.from_hf_dict({**cfg, "use_bidirectional_attention": True})
    with pytest.raises(JaxalignError, match="^attn_logit_softcapping is a Gemma setting; Qwen3ForCausalLM"):
        ModelConfig(**{k: v for k, v in cfg.items() if k != "architectures"}, num_key_value_heads=4, head_dim=8,
                    architecture="Qwen3ForCausalLM", attn_logit_softcapping=50.0)
    with pytest.raises(JaxalignError, match="^config.json: hidden_act 'relu' is not supported"):
        ModelConfig.from_hf_dict({**cfg, "hidden_activation": "relu"})
    with pytest.raises(JaxalignError, match="^config.json: rope_scaling type 'longrope' is not supported"):
        ModelConfig.from_hf_dict({**cfg, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}})
    with pytest.raises(JaxalignError, match="sliding_attention: rope_type 'linear' is not supported"):
        ModelConfig.from_hf_dict({**cfg, "architectures": ["Gemma3ForCausalLM"], "rope_parameters": {
            "full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "linear", "factor": 2.0}}})


@pytest.mark.parametrize("kind,cls", [("gemma2", "Gemma2ForSequenceClassification"),
                                      ("gemma3", "Gemma3TextForSequenceClassification"),
                                      ("qwen3", "Qwen3ForSequenceClassification")])
def test_reward_head_exports_as_the_family_classifier(kind, cls, tmp_path):
    transformers = pytest.importorskip("transformers")
    from jaxalign.io.hf import load_hf
    from jaxalign.models.heads import scalar_head_from_lm

    make_hf_model(kind, tmp_path / "lm")
    rm = scalar_head_from_lm(load_model(tmp_path / "lm"), seed=1)
    save_model(rm, tmp_path / "rm", extra_config={"pad_token_id": 0})
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(ref).__name__ == cls
    ids = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    got = np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    back = load_hf(tmp_path / "rm", scalar_head=True)
    assert back.config.architecture == load_model(tmp_path / "lm").config.architecture
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(ids), jnp.asarray(mask))), got, atol=1e-6)
