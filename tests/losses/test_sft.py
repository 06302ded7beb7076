"""Tests for jaxalign/losses/sft.py."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses import sft


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def batch(seed=0, b=3, s=8, v=13):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, s, v)).astype(np.float32) * 2
    ids = rng.integers(0, v, (b, s)).astype(np.int32)
    # prompt tokens 0, completion 1, right padding 0
    mask = np.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0, 0]])[:b, :s]
    return logits, ids, mask


def np_token_nll(logits, ids):
    ls = np_log_softmax(logits)
    out = np.zeros(ids.shape)
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            out[b, t] = -ls[b, t - 1, ids[b, t]]
    return out


class SFTLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_token_mean_against_numpy(self):
        logits, ids, mask = batch()
        loss, metrics = self.variant(sft.sft_loss)(logits, ids, mask)
        nll = np_token_nll(logits, ids)
        ref = nll[mask.astype(bool)].mean()  # one mean over all 3 + 7 + 1 completion tokens
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        np.testing.assert_allclose(metrics["num_tokens"], 11)
        np.testing.assert_allclose(metrics["perplexity"], np.exp(ref), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_mean_against_numpy(self):
        logits, ids, mask = batch()
        loss, _ = self.variant(partial(sft.sft_loss, aggregation="sequence_mean"))(logits, ids, mask)
        nll = np_token_nll(logits, ids)
        ref = np.mean([nll[b][mask[b].astype(bool)].mean() for b in range(3)])
        np.testing.assert_allclose(loss, ref, rtol=1e-5)

    def test_hand_example(self):
        # Two tokens: p(y1 | y0) = 1/4 (logits [0, log 3], target 0). Loss = log 4.
        logits = jnp.array([[[0.0, np.log(3.0)], [0.0, 0.0]]])
        loss, _ = sft.sft_loss(logits, jnp.array([[1, 0]]), jnp.array([[0, 1]]))
        np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-6)

    def test_chunked_equals_plain(self):
        logits, ids, mask = batch(1)
        a, _ = sft.sft_loss(logits, ids, mask)
        b, _ = jax.jit(partial(sft.sft_loss, chunk_size=3))(logits, ids, mask)
        np.testing.assert_allclose(a, b, rtol=1e-6)

    def test_position_zero_never_counts(self):
        logits, ids, mask = batch(2)
        marked = mask.copy()
        marked[:, 0] = 1
        np.testing.assert_allclose(sft.sft_loss(logits, ids, marked)[0], sft.sft_loss(logits, ids, mask)[0])

    def test_padding_invariance(self):
        logits, ids, mask = batch(3)
        base, _ = sft.sft_loss(logits, ids, mask)
        rng = np.random.default_rng(0)
        l2, i2 = logits.copy(), ids.copy()
        # ids at unmasked positions and the logits that predict them are irrelevant.
        for b in range(3):
            for t in range(8):
                if not mask[b, t]:
                    i2[b, t] = rng.integers(0, 13)
                    l2[b, t - 1] = rng.standard_normal(13) * 50 if t > 0 else l2[b, t]
            l2[b, -1] = np.nan  # the last position predicts nothing
        np.testing.assert_allclose(sft.sft_loss(l2, i2, mask)[0], base, rtol=1e-6)

    def test_gradient_accumulation_equals_full_batch(self):
        # Token-mean micro-batch losses weighted by their token counts = the full-batch loss,
        # for values and gradients (the reason for the token mean over the global batch).
        logits, ids, mask = batch(4)

        def f(lg, i, m):
            return sft.sft_loss(lg, i, m)

        vg = jax.jit(jax.value_and_grad(f, has_aux=True))
        (full, _), g_full = vg(logits, ids, mask)
        parts = [(slice(0, 1)), slice(1, 3)]
        tot = sum(float(mask[p].sum()) for p in parts)
        acc, acc_g = 0.0, np.zeros_like(logits)
        for p in parts:
            (l, m), g = vg(logits[p], ids[p], mask[p])
            acc += float(l) * float(m["num_tokens"]) / tot
            acc_g[p] = np.asarray(g) * float(m["num_tokens"]) / tot
        np.testing.assert_allclose(acc, full, rtol=1e-6)
        np.testing.assert_allclose(acc_g, g_full, atol=1e-7)
        # A known global normalizer gives the same without reweighting.
        f_norm = jax.jit(partial(sft.sft_loss, normalizer=tot))
        l0, _ = f_norm(logits[:1], ids[:1], mask[:1])
        l1, _ = f_norm(logits[1:], ids[1:], mask[1:])
        np.testing.assert_allclose(l0 + l1, full, rtol=1e-6)

    def test_nll_loss_empty_mask(self):
        loss, m = sft.nll_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
        self.assertEqual(float(loss), 0.0)
        self.assertEqual(float(m["num_tokens"]), 0.0)


class NEFTuneTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_noise_bounds_and_scale(self):
        emb = jnp.zeros((4, 64, 32), jnp.float32)
        alpha = 5.0
        out = self.variant(partial(sft.neftune_noise, alpha=alpha))(jax.random.PRNGKey(0), emb)
        a = alpha / np.sqrt(64 * 32)
        noise = np.asarray(out)
        self.assertLessEqual(np.abs(noise).max(), a)
        # U(-a, a): mean 0, variance a^2 / 3 (8192 samples: loose statistical bounds).
        self.assertLess(abs(noise.mean()), 0.05 * a)
        np.testing.assert_allclose(noise.var(), a * a / 3, rtol=0.05)

    def test_deterministic_in_key_and_keeps_dtype(self):
        emb = jnp.ones((2, 5, 8), jnp.bfloat16)
        k = jax.random.PRNGKey(3)
        a = sft.neftune_noise(k, emb, 10.0)
        b = sft.neftune_noise(k, emb, 10.0)
        c = sft.neftune_noise(jax.random.PRNGKey(4), emb, 10.0)
        self.assertEqual(a.dtype, jnp.bfloat16)
        np.testing.assert_array_equal(a, b)
        self.assertFalse(np.array_equal(np.asarray(a, np.float32), np.asarray(c, np.float32)))

    def test_seq_len_override(self):
        emb = jnp.zeros((1, 4, 4))
        out = sft.neftune_noise(jax.random.PRNGKey(0), emb, 1.0, seq_len=100)
        self.assertLessEqual(float(jnp.abs(out).max()), 1.0 / np.sqrt(400))
