"""Proposal prompts and their clean-up, with a recording stand-in for the model's sampler (the
real sampler is exercised by tests/ape/test_run.py)."""

import jax
import numpy as np

from jaxalign.ape.propose import propose, vary
from jaxalign.ape.templates import PROPOSAL_PREFIX, VARIATION_PREFIX

TRAIN = [(f"in{i}", f"out{i}") for i in range(10)]


class _Recorder:
    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def chat_ids(self, user, prefix=""):
        return (user, prefix)

    def sample(self, prompts, **kw):
        self.calls.append((list(prompts), kw))
        return self.texts[:len(prompts)]


def test_each_proposal_sees_its_own_demo_subset_and_duplicates_go():
    rec = _Recorder([" write the opposite.", "write the opposite.", "", " say it twice\nmore"])
    got = propose(rec, TRAIN, num_candidates=4, num_demos=3, max_new_tokens=5, temperature=0.7,
                  key=jax.random.key(0), rng=np.random.default_rng(0))
    assert got == ["Write the opposite.", "Say it twice."]
    (prompts, kw), = rec.calls
    assert kw["temperature"] == 0.7 and kw["max_new_tokens"] == 5
    for user, prefix in prompts:
        assert prefix == PROPOSAL_PREFIX + " "
        shown = [x for x, _ in TRAIN if f"Input: {x}\n" in user]
        assert len(shown) == 3  # num_demos distinct rows
    assert len({u for u, _ in prompts}) > 1  # different subsets


def test_variations_exclude_what_was_seen():
    rec = _Recorder(["Flip it.", "Reverse the word.", "Old one.", "Reverse the word."])
    got = vary(rec, ["Flip it.", "Turn it."], per_instruction=2, max_new_tokens=5, temperature=1.0,
               key=jax.random.key(0), exclude=["Old one."])
    assert got == ["Reverse the word."]
    prompts = rec.calls[0][0]
    assert len(prompts) == 4 and all(p == VARIATION_PREFIX + " " for _, p in prompts)
    assert sum("Input: Flip it." in u for u, _ in prompts) == 2
