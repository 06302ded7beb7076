"""Tests for jaxalign/losses/reward.py."""

import itertools
import math
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxalign.losses import reward


def np_logsig(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


class PairwiseTest(chex.TestCase):

    def test_hand_example(self):
        # r_w - r_l = 1: loss = log(1 + e^-1) = 0.31326168751822286
        loss, m = reward.pairwise_loss(jnp.array([1.0]), jnp.array([0.0]))
        np.testing.assert_allclose(loss, 0.31326168751822286, rtol=1e-6)
        self.assertEqual(float(m["accuracy"]), 1.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_margin_and_centering_against_numpy(self):
        rng = np.random.default_rng(0)
        rw, rl, mg = (rng.standard_normal(6).astype(np.float32) for _ in range(3))
        fn = self.variant(partial(reward.pairwise_loss, center_coef=0.01))
        loss, m = fn(rw, rl, margin=mg)
        ref = -np_logsig(rw - rl - mg).mean() + 0.01 * ((rw + rl) ** 2).mean()
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        np.testing.assert_allclose(m["accuracy"], (rw > rl).mean())
        np.testing.assert_allclose(m["margin"], (rw - rl).mean(), rtol=1e-5)

    def test_trl_reward_trainer_formula(self):
        # TRL 1.16 RewardTrainer.compute_loss needs a model and a trainer; its formula
        # (trl/trainer/reward_trainer.py lines 788-795) is reproduced here in torch.
        torch = pytest.importorskip("torch")
        F = torch.nn.functional
        rng = np.random.default_rng(1)
        rw, rl, mg = (rng.standard_normal(8).astype(np.float32) for _ in range(3))
        tw, tl, tm = map(torch.tensor, (rw, rl, mg))
        ref = -F.logsigmoid(tw - tl - tm).mean() + 0.01 * torch.mean((tw + tl) ** 2)
        loss, _ = reward.pairwise_loss(rw, rl, margin=mg, center_coef=0.01)
        np.testing.assert_allclose(loss, ref.item(), rtol=1e-6, atol=1e-6)


def np_kwise(r, mask):
    losses = []
    for row, m in zip(r, mask):
        valid = [x for x, ok in zip(row, m) if ok]
        pairs = list(itertools.combinations(range(len(valid)), 2))
        if pairs:
            losses.append(-sum(np_logsig(valid[i] - valid[j]) for i, j in pairs) / math.comb(len(valid), 2))
    return np.mean(losses)


def np_listmle(r, mask):
    losses = []
    for row, m in zip(r, mask):
        v = np.array([x for x, ok in zip(row, m) if ok], np.float64)
        if len(v) > 1:
            losses.append(-sum(v[k] - np.log(np.exp(v[k:]).sum()) for k in range(len(v) - 1)))
    return np.mean(losses)


class RankingTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(2)
        self.r = rng.standard_normal((4, 5)).astype(np.float32)
        self.mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_kwise_against_numpy(self):
        loss, _ = self.variant(reward.kwise_pairwise_loss)(self.r, self.mask)
        np.testing.assert_allclose(loss, np_kwise(self.r, self.mask), rtol=1e-5)
        full, _ = self.variant(reward.kwise_pairwise_loss)(self.r)
        np.testing.assert_allclose(full, np_kwise(self.r, np.ones_like(self.mask)), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_plackett_luce_against_numpy(self):
        loss, _ = self.variant(reward.plackett_luce_loss)(self.r, self.mask)
        np.testing.assert_allclose(loss, np_listmle(self.r, self.mask), rtol=1e-5)
        full, _ = self.variant(reward.plackett_luce_loss)(self.r)
        np.testing.assert_allclose(full, np_listmle(self.r, np.ones_like(self.mask)), rtol=1e-5)

    def test_plackett_luce_hand_example(self):
        # r = (log 3, log 2, 0): -[log 3 - log 6] - [log 2 - log 3] = log 6 - log 2 = log 3
        loss, _ = jax.jit(reward.plackett_luce_loss)(np.log(np.array([[3.0, 2.0, 1.0]], np.float32)))
        np.testing.assert_allclose(loss, np.log(3.0), rtol=1e-6)

    def test_k2_identities(self):
        rng = np.random.default_rng(3)
        r = rng.standard_normal((7, 2)).astype(np.float32)
        bt, _ = jax.jit(reward.pairwise_loss)(r[:, 0], r[:, 1])
        np.testing.assert_allclose(jax.jit(reward.kwise_pairwise_loss)(r)[0], bt, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(reward.plackett_luce_loss)(r)[0], bt, rtol=1e-6)

    def test_padding_invariance(self):
        bad = np.where(self.mask.astype(bool), self.r, np.nan).astype(np.float32)
        bad[1, 4] = np.inf
        for f in (jax.jit(reward.kwise_pairwise_loss), jax.jit(reward.plackett_luce_loss)):
            a, ma = f(self.r, self.mask)
            b, mb = f(bad, self.mask)
            np.testing.assert_allclose(b, a, rtol=1e-6)
            chex.assert_trees_all_close(ma, mb)
            g = jax.jit(jax.grad(lambda x: f(x, self.mask)[0]))(jnp.asarray(bad))
            self.assertTrue(np.all(np.isfinite(g)))
            np.testing.assert_array_equal(np.asarray(g)[~self.mask.astype(bool)], 0.0)

    def test_gradients(self):
        with jax.enable_x64(True):
            r = jnp.asarray(self.r, jnp.float64)
            check_grads(jax.jit(lambda x: reward.plackett_luce_loss(x, self.mask)[0]), (r,), order=1)
            check_grads(jax.jit(lambda x: reward.kwise_pairwise_loss(x, self.mask)[0]), (r,), order=1)

    def test_accuracy_metrics_by_hand(self):
        r = jnp.array([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0]])
        m = jnp.array([[1, 1, 1], [1, 1, 0]])
        acc = jax.jit(reward.ranking_accuracy)(r, m)
        # pairs: row 0 (3>1 yes, 3>2 yes, 1>2 no), row 1 (0>1 no) -> 2/4; top1: row 0 yes, row 1 no
        np.testing.assert_allclose(acc["pair_accuracy"], 0.5)
        np.testing.assert_allclose(acc["top1_accuracy"], 0.5)
        np.testing.assert_allclose(reward.preference_accuracy(jnp.array([1.0, 0.0, 2.0]),
                                                              jnp.array([0.0, 0.0, 3.0])), 1 / 3)

    def test_vmap_over_prompts(self):
        per = jax.jit(jax.vmap(lambda r: reward.plackett_luce_loss(r[None])[0]))(jnp.asarray(self.r))
        np.testing.assert_allclose(per.mean(), jax.jit(reward.plackett_luce_loss)(self.r)[0], rtol=1e-6)
