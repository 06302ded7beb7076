"""Tests for jaxalign/losses/raft.py."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses import raft

NEG = -np.inf


class SelectionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_best_of_k_by_hand(self):
        r = np.array([[0.1, 0.9, 0.3], [2.0, 2.0, 1.0], [NEG, NEG, NEG], [NEG, -5.0, NEG]], np.float32)
        idx, keep = self.variant(raft.best_of_k)(r)
        np.testing.assert_array_equal(np.asarray(idx)[[0, 1, 3]], [1, 0, 1])  # ties: the first
        np.testing.assert_array_equal(
            keep, [[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_top_fraction_by_hand(self):
        r = np.array([0.5, 3.0, -1.0, 3.0, 2.0, NEG, 0.0, 1.0], np.float32)
        idx, keep = self.variant(partial(raft.top_fraction, fraction=0.25))(r)
        np.testing.assert_array_equal(idx, [1, 3])  # equal rewards: by position
        np.testing.assert_array_equal(np.flatnonzero(keep), [1, 3])
        idx, keep = raft.top_fraction(r, 1.0)  # k = 8 includes the filtered one, never kept
        self.assertEqual(len(idx), 8)
        self.assertEqual(int(keep.sum()), 7)
        self.assertFalse(bool(keep[5]))

    def test_top_fraction_against_numpy(self):
        r = np.random.default_rng(0).standard_normal(64).astype(np.float32)
        idx, keep = raft.top_fraction(r, 0.125)
        np.testing.assert_array_equal(np.sort(np.asarray(idx)), np.sort(np.argsort(-r)[:8]))
        self.assertEqual(int(keep.sum()), 8)
        self.assertEqual(raft.num_top(1024 * 8, 0.125), 1024)
        with self.assertRaises(ValueError):
            raft.num_top(8, 0.0)

    def test_vmap_local_ranking(self):
        r = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
        idx, _ = jax.vmap(lambda x: raft.top_fraction(x, 1 / 8))(r)
        np.testing.assert_array_equal(idx[:, 0], np.argmax(r, axis=1))


class FilterTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_filters(self):
        rewards = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
        ids = np.array([[5, 6, 7, 0], [5, 9, 0, 0], [5, 6, 0, 0], [9, 9, 9, 9]], np.int32)
        mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
        fn = self.variant(partial(raft.filter_rewards, min_length=2, forbidden_ids=(9, 0)))
        out = fn(rewards, ids, mask)
        # row 0 fine (the 0 is padding); row 1 has a forbidden 9; row 2 fine; row 3 is empty.
        np.testing.assert_array_equal(out, [1.0, NEG, 3.0, NEG])

    def test_no_filters_is_identity_and_metrics(self):
        r = jnp.array([1.0, 2.0, 3.0, NEG])
        ids = jnp.zeros((4, 3), jnp.int32)
        np.testing.assert_array_equal(raft.filter_rewards(r, ids, jnp.ones((4, 3))), r)
        m = raft.selection_metrics(r, jnp.array([False, True, True, False]))
        np.testing.assert_allclose(m["reward/all"], 2.0)
        np.testing.assert_allclose(m["reward/kept"], 2.5)
        np.testing.assert_allclose(m["kept_fraction"], 0.5)
        np.testing.assert_allclose(m["filtered_fraction"], 0.25)
