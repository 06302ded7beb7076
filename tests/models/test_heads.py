"""Scalar heads: score at the last real token, and export as *ForSequenceClassification."""

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import init_model, save_model
from jaxalign.io.hf import load_hf
from jaxalign.models.config import ModelConfig
from jaxalign.models.heads import ScalarHeadModel, last_token_index, scalar_head_from_lm

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0)


def test_last_token_index_left_and_right_padding():
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 1])


def test_score_ignores_padding_and_pad_value():
    rm = scalar_head_from_lm(init_model(CFG, seed=0), seed=1)
    ids = jnp.array([[5, 6, 7, 0, 0]])
    a = rm(ids, jnp.array([[1, 1, 1, 0, 0]]))
    # Same real tokens, different pad values (even the EOS-like id 7): same score.
    b = rm(jnp.array([[5, 6, 7, 7, 7]]), jnp.array([[1, 1, 1, 0, 0]]))
    c = rm(jnp.array([[5, 6, 7]]), jnp.array([[1, 1, 1]]))
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(b, c, atol=1e-6)
    # And the score is the value at that token.
    v = rm.token_values(jnp.array([[5, 6, 7]]))
    np.testing.assert_allclose(c, v[:, 2], atol=1e-6)


def test_export_loads_in_transformers_with_same_scores(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rm = ScalarHeadModel(CFG, rngs=nnx.Rngs(3))
    save_model(rm, tmp_path)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == "LlamaForSequenceClassification"
    ids = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    got = np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    back = load_hf(tmp_path, scalar_head=True)
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(ids), jnp.asarray(mask))), got, atol=1e-6)
