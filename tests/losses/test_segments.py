"""Per-segment sums of packed rows against a hand loop (closed form), and masked NaNs kept out."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses.segments import segment_counts, segment_ends, segment_starts, segment_sums


def test_segment_sums_match_a_loop():
    rng = np.random.default_rng(0)
    seg = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2]], np.int32)
    x = rng.normal(size=seg.shape).astype(np.float32)
    mask = rng.integers(0, 2, seg.shape).astype(np.int32)
    x[0, 7] = np.nan  # padding, masked: must not leak
    mask[0, 7] = 0
    got = np.asarray(jax.jit(segment_sums, static_argnums=3)(x, mask, seg, 4))
    want = np.zeros((2, 4), np.float32)
    for r in range(2):
        for t in range(8):
            if seg[r, t] and mask[r, t]:
                want[r, seg[r, t] - 1] += x[r, t]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(segment_counts(mask, seg, 4),
                                  [[(mask[r] * (seg[r] == m)).sum() for m in range(1, 5)] for r in range(2)])


def test_segment_starts_and_ends():
    seg = jnp.array([[1, 1, 2, 3, 3, 0]])
    np.testing.assert_array_equal(segment_starts(seg), [[1, 0, 1, 1, 0, 1]])
    np.testing.assert_array_equal(segment_ends(seg), [[0, 1, 1, 0, 1, 0]])
