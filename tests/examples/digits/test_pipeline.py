"""The digits generator through the generic RAFT core: the sampler is deterministic for a key,
and RAFT with a planted reward (brightness, which the classifier knows nothing about) raises it
on held-out seeds, for local and global ranking."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign.examples.digits import data, pipeline


@pytest.fixture(scope="module")
def trained():
    s = pipeline.Settings.tiny()
    gen = pipeline.Generator(s)
    state, losses = pipeline.pretrain(gen, *data.load_halves(0)["generator"])
    assert losses[-1] < losses[0]
    return gen, state.params


def brightness(x, labels):
    """The planted reward: mean ink, 0..1."""
    return data.to_pixels(x).mean(axis=1) / data.MAX_INTENSITY


def test_sampler_is_deterministic_for_a_key(trained):
    gen, params = trained
    labels = np.arange(10)
    a = gen.sample(params, jax.random.key(0), labels, 3.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(gen.sample(params, jax.random.key(0), labels, 3.0)))
    assert not np.allclose(np.asarray(a), np.asarray(gen.sample(params, jax.random.key(1), labels, 3.0)))
    assert np.all(np.abs(np.asarray(a)) <= 1.0)


@pytest.mark.parametrize("ranking,prompts", [("local", 20), ("global", 160)])
def test_raft_raises_a_planted_reward(trained, ranking, prompts):
    gen, params = trained
    gen.s = dataclasses.replace(pipeline.Settings.tiny(), ranking=ranking, prompts=prompts, iterations=4)
    before = pipeline.evaluate(gen, params, brightness, 1.0)
    state, hist = pipeline.raft(gen, params, brightness, guidance=1.0)
    after = pipeline.evaluate(gen, state.params, brightness, 1.0)
    assert all(m["reward/kept_mean"] > m["reward/all_mean"] for m in hist)  # selection keeps the best
    assert after["mean"] > before["mean"] + 3 * max(before["se"], after["se"]), (before, after)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 10"):
        pipeline.Settings(prompts=15)
    with pytest.raises(ValueError, match="ranking must be one of"):
        pipeline.Settings(ranking="best")
    with pytest.raises(ValueError, match="10 kept samples per iteration do not split into num_minibatches=4"):
        pipeline.Settings(ranking="global", prompts=80)
