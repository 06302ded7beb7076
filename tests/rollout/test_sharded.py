"""Generation with a sharded model on 8 simulated CPU devices equals the 1-device result."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxalign import parallel as shd
from jaxalign.rollout import generate

from .conftest import peaky_model, ragged_prompts

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

KW = dict(max_new_tokens=10, eos_token_ids=(3, 11), pad_token_id=0)


@pytest.fixture(scope="module")
def reference():
    # 3 prompts: not a multiple of the 4 or 8 batch shards, so dummy rows are exercised
    ids, mask = ragged_prompts(n=3, max_len=9, seed=2)
    model = peaky_model(seed=3)
    greedy = generate(model, ids, mask, None, greedy=True, **KW)
    sampled = generate(model, ids, mask, jax.random.key(7), temperature=0.9, top_k=20,
                       num_samples=2, **KW)
    return ids, mask, greedy, sampled


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)], ids=["data2-fsdp2-tensor2", "fsdp8"])
def test_sharded_generation_equals_single_device(reference, shape):
    ids, mask, greedy, sampled = reference
    mesh = shd.make_mesh(shape)
    model = shd.shard_model(peaky_model(seed=3), mesh)
    q = model.layers.self_attn.q_proj.weight[...]
    assert isinstance(q.sharding, NamedSharding) and len(q.sharding.device_set) == 8
    g = generate(model, ids, mask, None, greedy=True, **KW)
    np.testing.assert_array_equal(np.asarray(g.tokens), np.asarray(greedy.tokens))
    np.testing.assert_array_equal(np.asarray(g.completion_mask), np.asarray(greedy.completion_mask))
    assert np.abs(np.asarray(g.logprobs) - np.asarray(greedy.logprobs)).max() < 1e-5
    # per-row keys: sampling does not depend on how the batch is split either
    s = generate(model, ids, mask, jax.random.key(7), temperature=0.9, top_k=20, num_samples=2, **KW)
    np.testing.assert_array_equal(np.asarray(s.tokens), np.asarray(sampled.tokens))
    assert np.abs(np.asarray(s.logprobs) - np.asarray(sampled.logprobs)).max() < 1e-5
    np.testing.assert_array_equal(np.asarray(s.finished), np.asarray(sampled.finished))


def test_explicit_mesh_with_replicated_params(reference):
    ids, mask, greedy, _ = reference
    mesh = shd.make_mesh((4, 2, 1))
    g = generate(peaky_model(seed=3), ids, mask, None, greedy=True, mesh=mesh, **KW)
    np.testing.assert_array_equal(np.asarray(g.tokens), np.asarray(greedy.tokens))


def test_output_stays_batch_sharded():
    ids, mask = ragged_prompts(n=4, max_len=9, seed=2)
    mesh = shd.make_mesh((2, 2, 2))
    r = generate(shd.shard_model(peaky_model(seed=3), mesh), ids, mask, None, greedy=True, **KW)
    for x in (r.tokens, r.logprobs, r.finished):
        assert x.sharding.spec[0] == ("data", "fsdp")
