"""generate()'s interface: model and key forms, prompt buckets, no recompilation within a
bucket, pad_prompts, input errors."""

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.rollout import prompt_bucket_length, generate, pad_prompts
from jaxalign.rollout.sampler import _generate_jit

from .conftest import ragged_prompts

PAD = 0


@pytest.fixture(scope="module")
def prompts():
    return ragged_prompts(n=4, max_len=11)


def test_model_or_graphdef_state_and_key_forms(model, prompts):
    ids, mask = prompts
    kw = dict(max_new_tokens=4, temperature=1.0, eos_token_ids=(), pad_token_id=PAD)
    a = generate(model, ids, mask, jax.random.key(5), **kw)
    b = generate(nnx.split(model), ids, mask, jax.random.PRNGKey(5), **kw)
    c = generate(model, ids, mask, 5, **kw)
    for x in (b, c):
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(x.tokens))


def test_no_recompile_within_a_bucket(model):
    kw = dict(max_new_tokens=5, eos_token_ids=(3,), pad_token_id=PAD)
    rng = np.random.default_rng(0)

    def batch(lengths):
        return pad_prompts([rng.integers(1, 97, L).tolist() for L in lengths], PAD, buckets=None)

    generate(model, *batch([3, 9, 5]), jax.random.key(0), temperature=0.7, **kw)
    size = _generate_jit._cache_size()
    # other lengths in the same bucket (16), another key and another temperature / top-p value
    generate(model, *batch([12, 2, 16]), jax.random.key(1), temperature=1.1, **kw)
    generate(model, *batch([1, 1, 7]), jax.random.key(2), temperature=0.3, **kw)
    kw.update(eos_token_ids=(5,), pad_token_id=7)  # same number of EOS ids, another pad
    generate(model, *batch([1, 1, 7]), jax.random.key(2), temperature=0.3, **kw)
    assert _generate_jit._cache_size() == size
    generate(model, *batch([3, 9, 5]), jax.random.key(0), temperature=0.7, top_p=0.9, **kw)
    generate(model, *batch([3, 9, 5]), jax.random.key(0), temperature=0.7, top_p=0.5, **kw)
    assert _generate_jit._cache_size() == size + 1
    generate(model, *batch([20]), jax.random.key(0), temperature=0.7, top_p=0.9, **kw)  # bucket 32
    assert _generate_jit._cache_size() == size + 2


def test_bucketing_does_not_change_results(model, prompts):
    ids, mask = prompts
    kw = dict(max_new_tokens=5, temperature=0.9, eos_token_ids=(), pad_token_id=PAD)
    a = generate(model, ids, mask, jax.random.key(4), buckets=None, **kw)
    b = generate(model, ids, mask, jax.random.key(4), buckets=(64,), **kw)
    assert a.tokens.shape == b.tokens.shape == (ids.shape[0], ids.shape[1] + 5)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs)).max() < 1e-5


def test_pad_prompts_and_buckets():
    ids, mask = pad_prompts([[5, 6, 7], [8]], pad_id=1, buckets=(4, 8))
    np.testing.assert_array_equal(ids, [[1, 5, 6, 7], [1, 1, 1, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert ids.dtype == mask.dtype == np.int32
    assert pad_prompts([[1] * 5], 0, buckets=(4, 8))[0].shape == (1, 8)
    assert pad_prompts([[1] * 5], 0, buckets=None)[0].shape == (1, 5)
    assert [prompt_bucket_length(n) for n in (1, 16, 17, 100, 2048, 2049)] == [16, 16, 32, 128, 2048, 4096]
    with pytest.raises(JaxalignError, match="empty"):
        pad_prompts([[1], []], 0)
    with pytest.raises(JaxalignError, match="no prompts"):
        pad_prompts([], 0)


def test_input_errors(model, prompts):
    ids, mask = prompts
    kw = dict(max_new_tokens=2, eos_token_ids=(), pad_token_id=PAD)
    right = np.zeros_like(mask)
    right[:, :3] = 1
    with pytest.raises(JaxalignError, match="left-padded"):
        generate(model, ids, right, 0, **kw)
    with pytest.raises(JaxalignError, match="needs a jax.random key"):
        generate(model, ids, mask, None, **kw)
    with pytest.raises(JaxalignError, match="top_p"):
        generate(model, ids, mask, 0, top_p=1.5, **kw)
    with pytest.raises(JaxalignError, match="max_new_tokens"):
        generate(model, ids, mask, 0, max_new_tokens=0, eos_token_ids=(), pad_token_id=0)
    with pytest.raises(JaxalignError, match=r"\[batch, prompt_len\]"):
        generate(model, ids[0], mask[0], 0, **kw)
    with pytest.raises(JaxalignError, match="CausalLM"):
        generate(object(), ids, mask, 0, **kw)
