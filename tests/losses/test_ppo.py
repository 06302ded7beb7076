"""Tests for jaxalign/losses/ppo.py against numpy loops written here."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxalign.losses import ppo

MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])


def rand(seed, shape=MASK.shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


class KLTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_closed_forms(self):
        lp, ref = rand(0), rand(1)
        d = lp.astype(np.float64) - ref
        for est, want in (("k1", d), ("k2", 0.5 * d * d), ("k3", np.exp(-d) - 1 + d)):
            out = self.variant(partial(ppo.kl_penalty, estimator=est))(lp, ref)
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    def test_k3_nonnegative_and_unbiased(self):
        # Samples x ~ p = N(0,1), q = N(0.5, 1): KL(p||q) = 0.125; k1, k3 unbiased, k3 >= 0.
        x = jax.random.normal(jax.random.PRNGKey(0), (200_000,))
        logp = -0.5 * x**2
        logq = -0.5 * (x - 0.5) ** 2
        k1 = ppo.kl_penalty(logp, logq, "k1")
        k3 = ppo.kl_penalty(logp, logq, "k3")
        self.assertGreaterEqual(float(k3.min()), 0.0)
        np.testing.assert_allclose(k1.mean(), 0.125, atol=5e-3)
        np.testing.assert_allclose(k3.mean(), 0.125, atol=5e-3)

    def test_trl_parity(self):
        # TRL computes its KL terms inline in trainers that need models; the formulas are
        # reproduced in torch from trl/trainer/grpo_trainer.py lines 3100-3102 (k3) and
        # trl/trainer/rloo_trainer.py line 1669 (k1).
        torch = pytest.importorskip("torch")
        lp, ref = rand(2), rand(3)
        tp, tr = torch.tensor(lp), torch.tensor(ref)
        k3 = torch.exp(tr - tp) - (tr - tp) - 1
        k1 = tp - tr
        np.testing.assert_allclose(ppo.kl_penalty(lp, ref, "k3"), k3.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ppo.kl_penalty(lp, ref, "k1"), k1.numpy(), rtol=1e-6, atol=1e-6)

    def test_unknown_estimator(self):
        with self.assertRaises(ValueError):
            ppo.kl_penalty(rand(0), rand(1), "k4")


class MomentsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_chan_merge_equals_numpy_over_everything(self):
        rng = np.random.default_rng(4)
        batches = [rng.normal(3.0, 2.0, n).astype(np.float32) for n in (5, 1, 17)]
        update = self.variant(ppo.running_moments_update)
        state = ppo.running_moments_init()
        for b in batches:
            state = update(state, b)
        allx = np.concatenate(batches).astype(np.float64)
        np.testing.assert_allclose(state.count, len(allx))
        np.testing.assert_allclose(state.mean, allx.mean(), rtol=1e-5)
        np.testing.assert_allclose(state.m2, ((allx - allx.mean()) ** 2).sum(), rtol=1e-4)
        np.testing.assert_allclose(ppo.running_moments_std(state), allx.std(ddof=1), rtol=1e-4)

    def test_mask_and_empty_batch(self):
        x = np.array([1.0, 2.0, 100.0, 3.0], np.float32)
        m = np.array([1, 1, 0, 1])
        s = ppo.running_moments_update(ppo.running_moments_init(), x, m)
        np.testing.assert_allclose([s.count, s.mean, s.m2], [3.0, 2.0, 2.0], rtol=1e-6)
        s2 = ppo.running_moments_update(s, x, np.zeros(4))
        chex.assert_trees_all_close(s, s2)
        self.assertEqual(float(ppo.running_moments_std(ppo.running_moments_init())), 1.0)

    def test_normalize_and_clip(self):
        # mean 2, sample std 1 after [1, 2, 3]
        s = ppo.running_moments_update(ppo.running_moments_init(), jnp.array([1.0, 2.0, 3.0]))
        out = ppo.normalize_and_clip(jnp.array([2.0, 2.5, 10.0, -10.0]), s, clip=0.8)
        np.testing.assert_allclose(out, [0.0, 0.5, 0.8, -0.8], rtol=1e-6)
        s2, out2 = ppo.update_and_normalize(ppo.running_moments_init(), jnp.array([1.0, 2.0, 3.0]), clip=None)
        np.testing.assert_allclose(out2, [-1.0, 0.0, 1.0], rtol=1e-6)
        chex.assert_trees_all_close(s, s2)


def np_gae(r, v, m, gamma, lam):
    b, t = r.shape
    adv = np.zeros((b, t))
    for i in range(b):
        n = int(m[i].sum())  # contiguous block at the start
        last = 0.0
        for s in reversed(range(n)):
            nv = v[i, s + 1] if s + 1 < n else 0.0
            delta = r[i, s] + gamma * nv - v[i, s]
            last = delta + gamma * lam * last
            adv[i, s] = last
    ret = np.where(m.astype(bool), adv + v, 0.0)
    return adv, ret


class RewardsAndGAETest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_token_rewards_by_hand(self):
        scores = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
        lp, ref = rand(5), rand(6)
        rewards, kl = self.variant(partial(ppo.per_token_rewards, kl_coef=0.1))(scores, lp, ref, MASK)
        want = np.where(MASK.astype(bool), -0.1 * (lp - ref), 0.0)
        want[0, 2] += 1.0  # last real tokens: 2, 4, 0; the empty row gets nothing
        want[1, 4] += 2.0
        want[2, 0] += 3.0
        np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kl, np.where(MASK.astype(bool), lp - ref, 0.0), rtol=1e-6)

    def test_last_token_from_mask_not_values(self):
        # Left-padded completions and a mask hole are handled: the last non-zero wins.
        m = np.array([[0, 0, 1, 1, 0], [1, 0, 1, 0, 0]])
        np.testing.assert_array_equal(ppo.last_token_index(m), [3, 2])

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1.0, 0.95), (0.9, 0.8), (0.99, 0.0))
    def test_gae_against_numpy(self, gamma, lam):
        r, v = rand(7), rand(8)
        adv, ret = self.variant(partial(ppo.gae, gamma=gamma, lam=lam))(r, v, MASK)
        a_ref, r_ref = np_gae(r.astype(np.float64), v.astype(np.float64), MASK, gamma, lam)
        np.testing.assert_allclose(adv, a_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ret, r_ref, rtol=1e-5, atol=1e-6)

    def test_gamma_lambda_one_is_reward_to_go_minus_value(self):
        r, v = rand(9), rand(10)
        adv, ret = ppo.gae(r, v, MASK, gamma=1.0, lam=1.0)
        rm = np.where(MASK.astype(bool), r, 0.0).astype(np.float64)
        rtg = np.cumsum(rm[:, ::-1], axis=1)[:, ::-1]
        np.testing.assert_allclose(adv, np.where(MASK.astype(bool), rtg - v, 0.0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, np.where(MASK.astype(bool), rtg, 0.0), rtol=1e-5, atol=1e-5)

    def test_padding_invariance_and_zero_bootstrap(self):
        r, v = rand(11), rand(12)
        a0, r0 = ppo.gae(r, v, MASK)
        pad = ~MASK.astype(bool)
        r2 = np.where(pad, 1e6, r).astype(np.float32)
        v2 = np.where(pad, np.nan, v).astype(np.float32)
        a1, r1 = ppo.gae(r2, v2, MASK)
        np.testing.assert_array_equal(a1, a0)
        np.testing.assert_array_equal(r1, r0)
        # The last real token of row 0 (t=2) sees no V_3: A = r_2 - V_2.
        np.testing.assert_allclose(a0[0, 2], r[0, 2] - v[0, 2], rtol=1e-6)

    def test_gae_gradient_free_inputs_are_fine_under_vmap(self):
        r, v = rand(13), rand(14)
        a, _ = ppo.gae(r, v, MASK)
        av = jax.vmap(lambda x, y, m: ppo.gae(x[None], y[None], m[None])[0][0])(r, v, MASK)
        np.testing.assert_allclose(av, a, rtol=1e-6)


def np_policy(lp, old, adv, m, eps, dual=None):
    ratio = np.exp(lp.astype(np.float64) - old)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - eps, 1 + eps)
    loss = np.maximum(l1, l2)
    if dual is not None:
        loss = np.where(adv < 0, np.minimum(loss, -dual * adv), loss)
    mb = m.astype(bool)
    return loss[mb].mean(), (l2 > l1)[mb].mean(), ((ratio - 1) - np.log(ratio))[mb].mean()


class PolicyValueTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(None, 3.0)
    def test_policy_loss_against_numpy(self, dual):
        old, adv = rand(15), rand(16, scale=2.0)
        lp = old + rand(17, scale=0.3)
        fn = self.variant(partial(ppo.policy_loss, clip_eps=0.2, dual_clip=dual))
        loss, m = fn(lp, old, adv, MASK)
        ref, clipfrac, kl = np_policy(lp, old, adv, MASK, 0.2, dual)
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        np.testing.assert_allclose(m["clipfrac"], clipfrac, rtol=1e-6)
        np.testing.assert_allclose(m["approx_kl"], kl, rtol=1e-4)

    def test_policy_hand_example(self):
        # ρ = 2, A = 1: max(-2, -1.2) = -1.2 (clipped). ρ = 2, A = -1: max(2, 1.2) = 2;
        # dual clip c = 1.5 caps it at 1.5.
        lp = jnp.log(jnp.array([[2.0, 2.0]]))
        zero = jnp.zeros((1, 2))
        adv = jnp.array([[1.0, -1.0]])
        loss, m = ppo.policy_loss(lp, zero, adv, jnp.ones((1, 2)))
        np.testing.assert_allclose(loss, (-1.2 + 2.0) / 2, rtol=1e-6)
        np.testing.assert_allclose(m["clipfrac"], 0.5)
        loss_d, md = ppo.policy_loss(lp, zero, adv, jnp.ones((1, 2)), dual_clip=1.5)
        np.testing.assert_allclose(loss_d, (-1.2 + 1.5) / 2, rtol=1e-6)
        np.testing.assert_allclose(md["dual_clipfrac"], 0.5)

    def test_policy_gradient_at_ratio_one_is_minus_advantage(self):
        old, adv = rand(18), rand(19)
        g = jax.jit(jax.grad(lambda x: ppo.policy_loss(x, old, adv, MASK)[0]))(jnp.asarray(old))
        want = np.where(MASK.astype(bool), -adv / MASK.sum(), 0.0)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
        with jax.enable_x64(True):
            lp = jnp.asarray(old + rand(20, scale=0.05), jnp.float64)  # away from the clip kinks
            check_grads(jax.jit(lambda x: ppo.policy_loss(x, old, adv, MASK)[0]), (lp,), order=1)

    def test_sequence_mean_and_padding_invariance(self):
        old, adv = rand(21), rand(22)
        lp = old + rand(23, scale=0.1)
        loss, _ = ppo.policy_loss(lp, old, adv, MASK, aggregation="sequence_mean")
        ratio = np.exp(lp.astype(np.float64) - old)
        per = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
        ref = np.mean([per[i][MASK[i].astype(bool)].mean() for i in range(3)])  # row 3 is empty
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        pad = ~MASK.astype(bool)
        bad = [np.where(pad, np.nan, x).astype(np.float32) for x in (lp, old, adv)]
        l2, m2 = ppo.policy_loss(*bad, MASK)
        l1, m1 = ppo.policy_loss(lp, old, adv, MASK)
        np.testing.assert_allclose(l2, l1, rtol=1e-6)
        chex.assert_trees_all_close(m1, m2)
        g = jax.grad(lambda x: ppo.policy_loss(x, bad[1], bad[2], MASK)[0])(jnp.asarray(bad[0]))
        self.assertTrue(np.all(np.isfinite(g)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_loss_against_numpy(self):
        v_old, ret = rand(24), rand(25)
        v = v_old + rand(26, scale=0.5)
        loss, m = self.variant(partial(ppo.value_loss, clip_eps=0.2))(v, v_old, ret, MASK)
        vc = v_old + np.clip(v - v_old, -0.2, 0.2)
        e1, e2 = (v - ret) ** 2, (vc - ret) ** 2
        mb = MASK.astype(bool)
        np.testing.assert_allclose(loss, 0.5 * np.maximum(e1, e2)[mb].mean(), rtol=1e-5)
        np.testing.assert_allclose(m["vf_clipfrac"], ((np.abs(v - v_old) > 0.2) & (e2 > e1))[mb].mean())
        unclipped, _ = ppo.value_loss(v, v_old, ret, MASK, clip_eps=None)
        np.testing.assert_allclose(unclipped, 0.5 * e1[mb].mean(), rtol=1e-5)
        bad = [np.where(mb, x, np.nan).astype(np.float32) for x in (v, v_old, ret)]
        np.testing.assert_allclose(ppo.value_loss(*bad, MASK)[0], loss, rtol=1e-6)

    def test_value_clipfrac_does_not_count_roundings_inside_the_range(self):
        # Every value within the clip range: nothing is clipped. In float32, v_old + (v - v_old)
        # differs from v for 2% of these tokens, and the naive "clipped error is larger" counted
        # about 0.1% as clipped (the metric then differed between runs by summation order).
        r = np.random.default_rng(0)
        v_old = r.normal(size=(64, 64)).astype(np.float32)
        v = (v_old + r.uniform(-0.1, 0.1, size=v_old.shape)).astype(np.float32)
        ret = r.normal(size=v_old.shape).astype(np.float32)
        mask = np.ones_like(v)
        vc = v_old + np.clip(v - v_old, np.float32(-0.2), np.float32(0.2))
        self.assertGreater(((vc - ret) ** 2 > (v - ret) ** 2).mean(), 0)  # the rounding is there
        _, m = ppo.value_loss(v, v_old, ret, mask, clip_eps=0.2)
        self.assertEqual(float(m["vf_clipfrac"]), 0.0)

    def test_per_token_rewards_padding_invariance(self):
        scores = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
        lp, ref = rand(27), rand(28)
        pad = ~MASK.astype(bool)
        a, ka = ppo.per_token_rewards(scores, lp, ref, MASK)
        b, kb = ppo.per_token_rewards(scores, np.where(pad, np.nan, lp).astype(np.float32),
                                      np.where(pad, 1e9, ref).astype(np.float32), MASK)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ka, kb)

    def test_adaptive_kl_coef_by_hand(self):
        # KL 9 vs target 6: e = clip(0.5) = 0.2; η' = 0.1 · (1 + 0.2 · 256/10000)
        new = ppo.adaptive_kl_coef(0.1, 9.0, 256, target=6.0, horizon=10000)
        np.testing.assert_allclose(new, 0.1 * (1 + 0.2 * 0.0256), rtol=1e-6)
        # KL 5.7 vs 6: e = -0.05
        new = jax.jit(partial(ppo.adaptive_kl_coef, target=6.0, horizon=100.0))(0.2, 5.7, 10)
        np.testing.assert_allclose(new, 0.2 * (1 - 0.05 * 0.1), rtol=1e-6)
