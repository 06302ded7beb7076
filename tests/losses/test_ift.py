"""Tests for jaxalign/losses/ift.py."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jaxalign.losses import ift, logprobs, sft

MASK = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]])


def np_weights(losses, mask, gamma):
    """ALGORITHMS.md §8 with an explicit double loop."""
    w = np.zeros(losses.shape)
    for b in range(losses.shape[0]):
        idx = np.flatnonzero(mask[b])
        n = len(idx)
        if gamma == 0:
            w[b, idx] = 1.0
            continue
        c = {t: sum(gamma ** (k - t) * losses[b, k] / n for k in idx if k >= t) for t in idx}
        tot = sum(c.values())
        for t in idx:
            w[b, t] = n * c[t] / tot
    return w


def token_logps(seed=0):
    return -np.random.default_rng(seed).gamma(2.0, 1.0, MASK.shape).astype(np.float32)


class PredictedIdsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_by_hand(self):
        # argmax per position: [2, 0, 1, 3]; the prediction for token i comes from i-1.
        logits = np.full((1, 4, 4), -1.0, np.float32)
        for pos, tok in enumerate([2, 0, 1, 3]):
            logits[0, pos, tok] = 1.0
        ids = np.array([[7, 8, 9, 10]], np.int32)
        completion = np.array([[1, 0, 1, 1]])  # position 0 marked: it still keeps its token
        out = self.variant(ift.ift_predicted_ids)(logits, ids, completion)
        np.testing.assert_array_equal(out, [[7, 8, 0, 1]])


class EmbeddingMixTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_mix_by_hand(self):
        table = jnp.arange(12.0).reshape(4, 3)
        y = jnp.array([[0, 1]])
        yh = jnp.array([[0, 3]])
        out = self.variant(ift.temporal_residual_embeddings)(table, y, yh, 0.25)
        np.testing.assert_allclose(out, [[[0, 1, 2], [0.75 * 3 + 0.25 * 9, 0.75 * 4 + 0.25 * 10,
                                                       0.75 * 5 + 0.25 * 11]]])
        np.testing.assert_allclose(ift.temporal_residual_embeddings(table, y, yh, 0.0), table[y])

    def test_table_is_stop_gradient(self):
        table = jnp.arange(12.0).reshape(4, 3)
        g = jax.grad(lambda t: ift.temporal_residual_embeddings(t, jnp.array([[1, 2]]),
                                                                jnp.array([[3, 2]]), 0.2).sum())(table)
        np.testing.assert_array_equal(g, 0.0)


class WeightsAndLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_weights_against_numpy(self):
        lp = token_logps(1)
        for gamma in (0.95, 0.5, 1.0, 0.0):
            w = self.variant(partial(ift.ift_weights, gamma=gamma))(-lp, MASK)
            np.testing.assert_allclose(w, np_weights(-lp.astype(np.float64), MASK, gamma), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(w).sum(1), MASK.sum(1), rtol=1e-5)

    def test_weights_hand_example(self):
        # L = 2, losses (1, 2), γ = 0.5: c = ((1 + 0.5·2)/2, 2/2) = (1, 1) -> w = (1, 1);
        # losses (2, 0): c = (1, 0) -> w = (2, 0)
        w = ift.ift_weights(jnp.array([[1.0, 2.0], [2.0, 0.0]]), jnp.ones((2, 2)), 0.5)
        np.testing.assert_allclose(w, [[1.0, 1.0], [2.0, 0.0]], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_against_numpy(self):
        lp = token_logps(2)
        loss, m = self.variant(partial(ift.ift_loss, gamma=0.95))(lp, MASK)
        nll = -lp.astype(np.float64)
        w = np_weights(nll, MASK, 0.95)
        per = [(w[b] * nll[b])[MASK[b].astype(bool)].sum() / MASK[b].sum() for b in range(3)]
        np.testing.assert_allclose(loss, np.mean(per), rtol=1e-5)
        np.testing.assert_allclose(m["nll"], nll[MASK.astype(bool)].mean(), rtol=1e-5)

    def test_gradients_flow_through_weights(self):
        lp = jnp.asarray(token_logps(3))
        g = jax.jit(jax.grad(lambda x: ift.ift_loss(x, MASK)[0]))(lp)

        def frozen(x):
            w = jax.lax.stop_gradient(ift.ift_weights(-x, MASK, 0.95))
            n = MASK.sum(1)
            return jnp.mean(jnp.sum(jnp.where(MASK.astype(bool), -w * x, 0.0), 1) / n)

        np.testing.assert_allclose(ift.ift_loss(lp, MASK)[0], jax.jit(frozen)(lp), rtol=1e-6)
        self.assertGreater(float(jnp.abs(g - jax.jit(jax.grad(frozen))(lp)).max()), 1e-3)
        with jax.enable_x64(True):
            check_grads(jax.jit(lambda x: ift.ift_loss(x, MASK)[0]), (jnp.asarray(lp, jnp.float64),), order=1)

    def test_padding_invariance(self):
        lp = token_logps(4)
        bad = np.where(MASK.astype(bool), lp, np.nan).astype(np.float32)
        a, _ = ift.ift_loss(lp, MASK)
        b, _ = ift.ift_loss(bad, MASK)
        np.testing.assert_allclose(b, a, rtol=1e-6)
        g = jax.jit(jax.grad(lambda x: ift.ift_loss(x, MASK)[0]))(jnp.asarray(bad))
        self.assertTrue(np.all(np.isfinite(g)))


class IFTEqualsSFTTest(chex.TestCase):
    """λ = 0 and γ = 0: the two-pass IFT pipeline is exactly SFT."""

    def test_pipeline(self):
        rng = np.random.default_rng(5)
        v, d = 11, 4
        table = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
        head = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
        ids = jnp.asarray(rng.integers(0, v, MASK.shape), jnp.int32)

        def model(embeds):  # any function of the input embeddings will do
            return jnp.tanh(jnp.cumsum(embeds, axis=1)) @ head

        def ift_pipeline(tab, lam, gamma):
            pass1 = jax.lax.stop_gradient(model(jnp.take(tab, ids, axis=0)))
            pred = ift.ift_predicted_ids(pass1, ids, MASK)
            embeds = ift.temporal_residual_embeddings(tab, ids, pred, lam)
            lp = logprobs.shifted_token_logprobs(model(embeds), ids)
            return ift.ift_loss(lp, MASK, gamma=gamma)[0]

        sft_seq, _ = sft.sft_loss(model(jnp.take(table, ids, axis=0)), ids, MASK, aggregation="sequence_mean")
        np.testing.assert_allclose(ift_pipeline(table, 0.0, 0.0), sft_seq, rtol=1e-6)
        self.assertGreater(abs(float(ift_pipeline(table, 0.2, 0.95)) - float(sft_seq)), 1e-4)
        # With equal completion lengths the sequence mean is also SFT's token mean.
        eq = np.array([[0, 1, 1, 0, 0, 0]] * 3)
        lp = logprobs.shifted_token_logprobs(model(jnp.take(table, ids, axis=0)), ids)
        np.testing.assert_allclose(ift.ift_loss(lp, eq, gamma=0.0)[0], sft.nll_loss(lp, eq)[0], rtol=1e-6)
