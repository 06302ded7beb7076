"""The digits generator through the generic RAFT core: the sampler is deterministic for a key,
and RAFT with a planted reward (brightness, which the classifier knows nothing about) raises it
on held-out seeds, for local and global ranking."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
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


@pytest.mark.parametrize("ranking,prompts,proposal", [("local", 20, "current"), ("global", 160, "current"),
                                                      ("local", 20, "pretrained")])
def test_raft_raises_a_planted_reward(trained, ranking, prompts, proposal):
    gen, params = trained
    gen.s = dataclasses.replace(pipeline.Settings.tiny(), ranking=ranking, prompts=prompts, iterations=3,
                                epochs=4, raft_lr=3e-3, proposal=proposal)
    before = pipeline.evaluate(gen, params, brightness, 1.0)
    state, hist = pipeline.raft(gen, params, brightness, guidance=1.0)
    after = pipeline.evaluate(gen, state.params, brightness, 1.0)
    assert all(m["reward/kept_mean"] > m["reward/all_mean"] for m in hist)  # selection keeps the best
    assert after["mean"] > before["mean"] + 3 * max(before["se"], after["se"]), (before, after)


def test_pretrained_proposal_samples_the_frozen_model(trained):
    # With proposal=pretrained every iteration's candidates come from the params RAFT started
    # from: the same key gives the same candidates whatever the fine-tuning did.
    gen, params = trained
    seen = []
    record = lambda x, labels: (seen.append(np.asarray(x)), brightness(x, labels))[1]
    for proposal in ("pretrained", "current"):
        gen.s = dataclasses.replace(pipeline.Settings.tiny(), iterations=2, proposal=proposal, seed=0)
        seen.clear()
        pipeline.raft(gen, params, record, guidance=1.0)
        key1 = jax.random.fold_in(jax.random.key(0), 1)
        labels = np.repeat(pipeline.prompt_labels(gen.s), gen.s.selection().samples_per_prompt)
        frozen = np.asarray(gen.sample(params, key1, labels, 1.0))
        assert np.array_equal(seen[1], frozen) == (proposal == "pretrained")


def test_bad_settings_are_clear_errors():
    with pytest.raises(JaxalignError, match="multiple of 10"):
        pipeline.Settings(prompts=15)
    with pytest.raises(JaxalignError, match="ranking must be one of"):
        pipeline.Settings(ranking="best")
    with pytest.raises(JaxalignError, match="proposal must be one of"):
        pipeline.Settings(proposal="teacher")
    with pytest.raises(JaxalignError, match="10 kept samples per iteration do not split into num_minibatches=4"):
        pipeline.Settings(ranking="global", prompts=80)
    with pytest.raises(JaxalignError, match="config key 'sample_steps': must be >= 1 and <= 100, got 101"):
        pipeline.Settings(sample_steps=101)
    with pytest.raises(JaxalignError, match="config key 'raft_lr': must be > 0.0, got 0"):
        pipeline.Settings(raft_lr=0)
