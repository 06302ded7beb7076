"""Tests for jaxalign/losses/logprobs.py against numpy written here, and TRL's helpers."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxalign.losses import logprobs as lp


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def make(seed=0, b=3, s=7, v=11, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, s, v)) * scale).astype(np.float32)
    ids = rng.integers(0, v, (b, s)).astype(np.int32)
    return logits, ids


class TokenLogprobsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 0.7)
    def test_matches_numpy_log_softmax(self, temperature):
        logits, ids = make()
        fn = self.variant(partial(lp.token_logprobs, temperature=temperature))
        out = fn(logits, ids)
        ref = np.take_along_axis(np_log_softmax(logits / temperature), ids[..., None], -1)[..., 0]
        self.assertEqual(out.dtype, jnp.float32)
        np.testing.assert_allclose(out, ref, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_shifted_convention(self):
        logits, ids = make(1)
        out = np.asarray(self.variant(lp.shifted_token_logprobs)(logits, ids))
        ref = np.zeros(ids.shape)
        ls = np_log_softmax(logits)
        for b in range(ids.shape[0]):
            for t in range(1, ids.shape[1]):  # token t is predicted by the logits at t-1
                ref[b, t] = ls[b, t - 1, ids[b, t]]
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_array_equal(out[:, 0], 0.0)

    def test_hand_example(self):
        # logits [0, log 3] -> p = [1/4, 3/4]; token 1 at position 1 is predicted by position 0.
        logits = jnp.array([[[0.0, np.log(3.0)], [5.0, 5.0]]])
        ids = jnp.array([[0, 1]])
        out = lp.shifted_token_logprobs(logits, ids)
        np.testing.assert_allclose(out, [[0.0, np.log(0.75)]], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 3, 4, 7, 100)
    def test_chunked_equals_plain(self, chunk):
        logits, ids = make(2, b=2, s=12, v=13)
        plain = self.variant(lp.shifted_token_logprobs)(logits, ids)
        chunked = self.variant(partial(lp.shifted_token_logprobs, chunk_size=chunk))(logits, ids)
        np.testing.assert_allclose(chunked, plain, atol=2e-6)
        # Same numbers up to float32 summation order (entropy is a difference of O(1) terms).
        ent = self.variant(partial(lp.entropy_from_logits, temperature=0.8))(logits)
        ent_c = self.variant(partial(lp.entropy_from_logits, chunk_size=chunk, temperature=0.8))(logits)
        np.testing.assert_allclose(ent_c, ent, atol=1e-5)

    def test_chunked_gradients_equal_plain(self):
        # The chunked path has its own VJP (per-chunk recomputation, in-place gradient);
        # gradients w.r.t. logits and temperature must match the plain path's.
        logits, ids = make(3, b=2, s=10, v=9)
        w = jax.random.normal(jax.random.PRNGKey(0), ids.shape)

        def f(lg, temp, chunk):
            lp_ = lp.shifted_token_logprobs(lg, ids, chunk_size=chunk, temperature=temp)
            ent = lp.entropy_from_logits(lg, chunk_size=chunk, temperature=temp)
            return jnp.sum(w * lp_) + jnp.sum(w * ent)

        grad = jax.jit(jax.grad(f, argnums=(0, 1)), static_argnums=2)
        g_plain = grad(logits, 0.9, None)
        for chunk in (3, 4):
            g_chunk = grad(logits, 0.9, chunk)
            np.testing.assert_allclose(g_chunk[0], g_plain[0], atol=1e-6)
            np.testing.assert_allclose(g_chunk[1], g_plain[1], rtol=1e-5)

    def test_chunked_gradient_memory_is_bounded(self):
        # With the custom VJP the backward's temporaries are a few chunks, not a second
        # [B, S, V] accumulator (plain autodiff of lax.map over slices needs one).
        b, s, v, chunk = 2, 64, 4096, 16
        f = jax.jit(jax.grad(lambda lg, i: lp.shifted_token_logprobs(lg, i, chunk_size=chunk).sum()))
        stats = f.lower(jax.ShapeDtypeStruct((b, s, v), jnp.float32),
                        jax.ShapeDtypeStruct((b, s), jnp.int32)).compile().memory_analysis()
        if stats is None:
            pytest.skip("backend has no memory analysis")
        self.assertLessEqual(stats.temp_size_in_bytes, 3 * b * chunk * v * 4)

    def test_check_grads(self):
        logits, ids = make(4, b=2, s=5, v=6)
        with jax.enable_x64(True):
            x = jnp.asarray(logits, jnp.float64)
            check_grads(jax.jit(lambda lg: lp.token_logprobs(lg, ids, temperature=1.3)), (x,), order=2)
            check_grads(jax.jit(lambda lg: lp.token_logprobs(lg, ids, chunk_size=2)), (x,), order=1,
                        modes=["rev"])
            check_grads(jax.jit(lp.entropy_from_logits), (x,), order=1)

    def test_bfloat16_logits_give_float32(self):
        logits, ids = make(5)
        lg16 = jnp.asarray(logits, jnp.bfloat16)
        out = jax.jit(lp.shifted_token_logprobs)(lg16, ids)
        self.assertEqual(out.dtype, jnp.float32)
        # Exact log-softmax of the bf16-rounded values, computed in float64.
        ls = np_log_softmax(np.asarray(lg16.astype(jnp.float32)))
        ref = np.take_along_axis(ls[:, :-1], ids[:, 1:, None], -1)[..., 0]
        np.testing.assert_allclose(out[:, 1:], ref, atol=1e-5)

    def test_large_logits_are_stable(self):
        logits = jnp.array([[[1e4, 1e4 - 1.0, -1e4]]], jnp.float32)
        out = lp.token_logprobs(logits, jnp.array([[1]]))
        np.testing.assert_allclose(out, [[-1.0 - np.log1p(np.exp(-1.0))]], rtol=1e-6)

    def test_vmap(self):
        logits, ids = make(6)
        batched = lp.token_logprobs(logits, ids)
        mapped = jax.vmap(lp.token_logprobs)(logits, ids)
        np.testing.assert_allclose(mapped, batched, atol=1e-6)

    def test_no_float32_copy_of_logits_when_jitted(self):
        # The plain float32 path fuses gather and reductions: its temporaries are far smaller
        # than one [B, S, V] float32 array.
        b, s, v = 2, 64, 4096
        lowered = jax.jit(lp.shifted_token_logprobs).lower(
            jax.ShapeDtypeStruct((b, s, v), jnp.float32), jax.ShapeDtypeStruct((b, s), jnp.int32))
        stats = lowered.compile().memory_analysis()
        if stats is None:
            pytest.skip("backend has no memory analysis")
        self.assertLess(stats.temp_size_in_bytes, b * s * v * 4 // 8)

    def test_rejects_bad_inputs(self):
        logits, ids = make()
        with self.assertRaises(AssertionError):
            lp.token_logprobs(logits, ids.astype(np.float32))
        with self.assertRaises(AssertionError):
            lp.shifted_token_logprobs(logits, ids[:, :-1])
        with self.assertRaises(ValueError):
            lp.token_logprobs(logits, ids, chunk_size=0)


class EntropyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_entropy(self):
        logits, _ = make(7)
        out = self.variant(lp.entropy_from_logits)(logits)
        p = np.exp(np_log_softmax(logits))
        np.testing.assert_allclose(out, -(p * np.log(p)).sum(-1), atol=1e-5)

    def test_closed_forms(self):
        v = 8
        uniform = jnp.zeros((1, 2, v))
        np.testing.assert_allclose(lp.entropy_from_logits(uniform), np.full((1, 2), np.log(v)), rtol=1e-6)
        # Two equally likely tokens, the rest impossible: H = log 2.
        two = jnp.full((1, 1, v), -1e9).at[..., :2].set(0.0)
        np.testing.assert_allclose(lp.entropy_from_logits(two), [[np.log(2.0)]], rtol=1e-6)
        # Masked logits (-inf, as after top-k filtering) are fine on both paths, with gradients.
        masked = jnp.full((1, 2, v), -jnp.inf).at[..., :2].set(0.0)
        for chunk in (None, 1):
            f = partial(lp.entropy_from_logits, chunk_size=chunk)
            np.testing.assert_allclose(f(masked), np.full((1, 2), np.log(2.0)), rtol=1e-6)
            g = jax.grad(lambda x: f(x).sum())(masked)
            self.assertTrue(np.all(np.isfinite(g)))
            out = lp.token_logprobs(masked, jnp.array([[1, 0]]), chunk_size=chunk)
            np.testing.assert_allclose(out, np.full((1, 2), -np.log(2.0)), rtol=1e-6)
            g = jax.grad(lambda x: lp.token_logprobs(x, jnp.array([[1, 0]]), chunk_size=chunk).sum())(masked)
            self.assertTrue(np.all(np.isfinite(g)))

    def test_shifted(self):
        logits, _ = make(8)
        plain = lp.entropy_from_logits(logits)
        shifted = lp.entropy_from_logits(logits, shifted=True)
        np.testing.assert_array_equal(shifted[:, 0], 0.0)
        np.testing.assert_allclose(shifted[:, 1:], plain[:, :-1])


class MaskedStatsTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(9)
        self.x = rng.standard_normal((3, 6)).astype(np.float32)
        self.mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], np.int32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_against_numpy_on_valid_subset(self):
        x, m = self.x, self.mask
        vals = x[m.astype(bool)].astype(np.float64)
        np.testing.assert_allclose(self.variant(lp.masked_sum)(x, m), vals.sum(), rtol=1e-5)
        np.testing.assert_allclose(self.variant(lp.masked_mean)(x, m), vals.mean(), rtol=1e-5)
        np.testing.assert_allclose(self.variant(lp.masked_var)(x, m), vals.var(ddof=1), rtol=1e-5)
        np.testing.assert_allclose(
            self.variant(partial(lp.masked_var, unbiased=False))(x, m), vals.var(), rtol=1e-5)
        w = np.asarray(self.variant(lp.masked_whiten)(x, m))
        ref = (vals - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8)
        np.testing.assert_allclose(w[m.astype(bool)], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(w[~m.astype(bool)], 0.0)
        w2 = np.asarray(lp.masked_whiten(x, m, shift_mean=False))
        np.testing.assert_allclose(w2[m.astype(bool)], ref + vals.mean(), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_logprobs(self):
        x, m = self.x, self.mask
        sums = self.variant(lp.sequence_logprobs)(x, m)
        means = self.variant(partial(lp.sequence_logprobs, average=True))(x, m)
        for b in range(3):
            row = x[b][m[b].astype(bool)]
            np.testing.assert_allclose(sums[b], row.sum(), rtol=1e-5)
            np.testing.assert_allclose(means[b], row.mean(), rtol=1e-5)
        np.testing.assert_allclose(lp.masked_mean(x, m, axis=-1), means, rtol=1e-6)

    def test_padding_invariance_even_for_nonfinite_values(self):
        x, m = self.x, self.mask
        bad = np.where(m.astype(bool), x, np.nan).astype(np.float32)
        bad[0, 4] = np.inf
        for f in (lp.masked_sum, lp.masked_mean, lp.masked_var, lp.masked_whiten, lp.sequence_logprobs):
            np.testing.assert_allclose(f(bad, m), f(x, m), rtol=1e-6)
        g = jax.grad(lambda v: lp.masked_mean(v, m))(jnp.asarray(bad))
        self.assertTrue(np.all(np.isfinite(g)))
        np.testing.assert_array_equal(np.asarray(g)[~m.astype(bool)], 0.0)

    def test_empty_mask_gives_zero(self):
        z = np.zeros((2, 3), np.int32)
        self.assertEqual(float(lp.masked_mean(self.x[:2, :3], z)), 0.0)
        self.assertEqual(float(lp.masked_var(self.x[:2, :3], z)), 0.0)


class TRLParityTest(parameterized.TestCase):
    """TRL's own helpers are the independent reference (trl/trainer/utils.py,
    trl/experimental/cpo/cpo_trainer.py ``get_batch_logps``)."""

    def setUp(self):
        super().setUp()
        self.torch = pytest.importorskip("torch")
        pytest.importorskip("trl")

    @parameterized.parameters(1.0, 0.8)
    def test_selective_log_softmax_and_entropy(self, temperature):
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax
        torch = self.torch
        logits, ids = make(10, b=2, s=9, v=33)
        ref = selective_log_softmax(torch.tensor(logits), torch.tensor(ids).long(), temperature=temperature)
        np.testing.assert_allclose(lp.token_logprobs(logits, ids, temperature=temperature), ref.numpy(), atol=1e-5)
        ref_h = entropy_from_logits(torch.tensor(logits) / temperature)
        np.testing.assert_allclose(lp.entropy_from_logits(logits, temperature=temperature), ref_h.numpy(), atol=1e-5)

    def test_sequence_sums_match_get_batch_logps(self):
        import os
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo.cpo_trainer import CPOTrainer
        torch = self.torch
        logits, ids = make(11, b=3, s=8, v=17)
        mask = np.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0]])
        labels = np.where(mask.astype(bool), ids, -100)
        for average in (False, True):
            ref = CPOTrainer.get_batch_logps(torch.tensor(logits), torch.tensor(labels).long(),
                                             average_log_prob=average)
            ours = lp.sequence_logprobs(lp.shifted_token_logprobs(logits, ids), mask, average=average)
            np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


class ShardedTest(parameterized.TestCase):
    """A batch sharded over 8 (simulated) devices gives the 1-device numbers."""

    def test_batch_sharded_over_devices(self):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        from jaxalign.losses import ppo
        devices = jax.devices()
        if len(devices) < 8:
            pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
        mesh = Mesh(np.array(devices[:8]), ("data",))
        logits, ids = make(12, b=8, s=12, v=17)
        mask = (np.arange(12)[None] < np.arange(4, 12)[:, None]).astype(np.int32)

        def f(lg, i, m):
            tok = lp.shifted_token_logprobs(lg, i, chunk_size=5)
            adv, _ = ppo.gae(tok, jnp.zeros_like(tok), m)
            return lp.sequence_logprobs(tok, m), lp.masked_whiten(adv, m), lp.entropy_from_logits(lg)

        want = jax.jit(f)(logits, ids, mask)
        shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
        got = jax.jit(f)(shard(logits), shard(ids), shard(mask))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
