"""The experience phase: sampling log-probs equal the training forward, reference log-probs are
the reference's, and the phase on 8 devices (2x2x2 mesh) gives the 1-device result."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign.algorithms import grpo, online  # noqa: F401  (registers grpo)
from jaxalign.losses import shifted_token_logprobs
from tests.algorithms.conftest import tiny_cfg


def _setup(mesh_over, greedy_temp=1.0):
    cfg = tiny_cfg("grpo", "grpo.beta=0.05", "train.batch_size=4", *mesh_over)
    a = cfg.algo
    return cfg, online.setup(cfg, num_samples=a.num_generations, sampling=a.sampling, reward=a.reward,
                             need_ref=True)


def _experience(s, cfg):
    batch = next(s.prompts)
    key = online.sample_key(jax.random.key_data(jax.random.key(7)))
    exp, texts, metrics = s.maker(s.params, batch, key)
    return jax.device_get(exp), texts, metrics


@pytest.fixture(scope="module")
def one_device():
    cfg, s = _setup(["mesh.fsdp=1"])
    return cfg, s, _experience(s, cfg)


def test_sampling_logps_equal_the_training_forward(one_device):
    cfg, s, (exp, _, _) = one_device
    model = nnx.merge(s.graphdef, s.params)
    logits = model(exp["input_ids"], exp["attention_mask"])
    lp = np.asarray(shifted_token_logprobs(logits, exp["input_ids"], temperature=cfg.algo.sampling.temperature))
    m = exp["completion_mask"].astype(bool)
    assert m.sum() > 0
    np.testing.assert_allclose(exp["old_logps"][m], lp[m], atol=1e-4)
    # The reference is the starting policy: before any update its log-probs are the policy's.
    np.testing.assert_allclose(exp["ref_logps"][m], lp[m], atol=1e-4)


def test_scores_are_the_reward_of_the_decoded_completions(one_device):
    _, s, (exp, (prompts, comps), metrics) = one_device
    want = s.maker.reward(prompts, comps, finished=exp["finished"].astype(bool))
    np.testing.assert_array_equal(exp["scores"], want)
    assert metrics["reward/mean"] == pytest.approx(float(np.mean(want)))
    assert metrics["time/generate"] > 0 and metrics["time/score"] >= 0


def test_eight_devices_give_the_one_device_experience(one_device):
    cfg1, s1, (exp1, _, _) = one_device
    cfg8, s8 = _setup(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    leaves = jax.tree.leaves(s8.params)
    assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated for x in leaves)
    exp8, _, _ = _experience(s8, cfg8)
    np.testing.assert_array_equal(exp8["input_ids"], exp1["input_ids"])
    np.testing.assert_array_equal(exp8["completion_mask"], exp1["completion_mask"])
    np.testing.assert_array_equal(exp8["scores"], exp1["scores"])
    m = exp1["completion_mask"].astype(bool)
    np.testing.assert_allclose(exp8["old_logps"][m], exp1["old_logps"][m], atol=1e-5)
    np.testing.assert_allclose(exp8["ref_logps"][m], exp1["ref_logps"][m], atol=1e-5)
