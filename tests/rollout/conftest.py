"""Tiny models for the rollout tests."""

import jax
import numpy as np
import pytest

from jaxalign import init_model
from jaxalign.models.config import ModelConfig

TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True)


def peaky_model(seed: int = 0, scale: float = 25.0, config: ModelConfig = TINY):
    """A random tiny model whose next-token distributions are far from uniform.

    init weights give logits of std ~0.1 (nearly uniform over the vocabulary); scaling the
    output embedding makes a few tokens dominate, so sampled sequences repeat tokens and hit a
    planted EOS at different steps, and greedy argmaxes are well separated.
    """
    model = init_model(config, seed=seed)
    model.lm_head.weight[...] = model.lm_head.weight[...] * scale
    return model


def ragged_prompts(n: int = 4, max_len: int = 11, seed: int = 0, vocab: int = TINY.vocab_size):
    """Left-padded random prompts of different lengths (pad id 0): (ids, mask) int32."""
    rng = np.random.default_rng(seed)
    lens = np.linspace(1, max_len, n).astype(int)
    ids = np.zeros((n, max_len), np.int32)
    mask = np.zeros((n, max_len), np.int32)
    for i, L in enumerate(lens):
        ids[i, max_len - L:] = rng.integers(1, vocab, L)
        mask[i, max_len - L:] = 1
    return ids, mask


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
    """Full float32 matmuls on GPUs/TPUs too (their default, TF32/bf16 passes, moves the
    cached-decode and full-forward log-probs ~1e-3 apart); no effect on the CPU."""
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(scope="module")
def model():
    return peaky_model()


def first_eos_index(row, eos_ids):
    hits = np.flatnonzero(np.isin(row, list(eos_ids)))
    return int(hits[0]) if hits.size else None


def teacher_forced_logprobs(model, tokens, attention_mask, temperature):
    """log_softmax(logits / T) at t-1 gathered at token t, aligned with tokens (0 at t=0)."""
    from jaxalign import forward_logits

    logits = np.asarray(forward_logits(model, tokens, attention_mask), np.float64)
    x = logits / temperature
    x = x - x.max(-1, keepdims=True)
    lsm = x - np.log(np.exp(x).sum(-1, keepdims=True))
    tok = np.asarray(tokens)
    out = np.zeros(tok.shape)
    out[:, 1:] = np.take_along_axis(lsm[:, :-1], tok[:, 1:, None], axis=-1)[..., 0]
    return out
