"""Per-example statistics of packed rows (several examples per row, told apart by segment ids).

A packed row ``[S]`` carries segment ids ``1, 2, ...`` for its examples and ``0`` for padding
(:mod:`jaxalign.data.packing`). The quantities the unpacked losses compute per row — a
sequence's summed completion log-prob (DPO, ``sequence_logprobs``), its completion token count,
its mean NLL (SFT ``sequence_mean``), its last real token (reward models) — are computed here
per segment, so a packed batch gives every example exactly its unpacked value.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def segment_starts(segment_ids: Array) -> Array:
    """``[..., S]`` bool: True at the first token of each segment (where the id changes)."""
    prev = jnp.concatenate([jnp.full_like(segment_ids[..., :1], -1), segment_ids[..., :-1]], axis=-1)
    return segment_ids != prev


def segment_ends(segment_ids: Array) -> Array:
    """``[..., S]`` bool: True at the last token of each real (id > 0) segment."""
    nxt = jnp.concatenate([segment_ids[..., 1:], jnp.full_like(segment_ids[..., :1], -1)], axis=-1)
    return (segment_ids != nxt) & (segment_ids > 0)


def segment_sums(x: Array, mask: Array, segment_ids: Array, num_segments: int) -> Array:
    """``out[r, m] = Σ_t [seg[r, t] = m + 1] · mask[r, t] · x[r, t]``: sums per segment ``[R, M]``.

    One ``segment_sum`` over the flattened rows (``O(R·S)``, no ``[R, S, M]`` one-hot). Masked
    entries are dropped with ``where``, so non-finite values at padding cannot leak. Segments
    with ids above ``num_segments`` are an error of the caller (they land in a dropped bucket).

    Args:
      x: ``[R, S]`` values (e.g. per-token log-probs).
      mask: ``[R, S]`` which tokens count (e.g. the completion mask).
      segment_ids: ``[R, S]`` int ids, 0 = padding.
      num_segments: ``M`` (static): the most segments a row can hold.
    """
    chex.assert_rank([x, mask, segment_ids], 2)
    chex.assert_equal_shape([x, mask, segment_ids])
    r = x.shape[0]
    m = int(num_segments)
    vals = jnp.where(mask.astype(bool), x, jnp.zeros((), x.dtype))
    # Row r's segment k goes to bucket r·(M+1) + k; bucket k = 0 (padding) is discarded below.
    ids = jnp.arange(r, dtype=jnp.int32)[:, None] * (m + 1) + jnp.minimum(segment_ids, m + 1).astype(jnp.int32)
    ids = jnp.where(segment_ids > m, r * (m + 1), ids)  # out of range: a bucket nobody reads
    out = jax.ops.segment_sum(vals.reshape(-1), ids.reshape(-1), num_segments=r * (m + 1) + 1)
    return out[:-1].reshape(r, m + 1)[:, 1:]


def segment_counts(mask: Array, segment_ids: Array, num_segments: int) -> Array:
    """``[R, M]`` float32: the masked tokens of each segment."""
    return segment_sums(jnp.ones(mask.shape, jnp.float32), mask, segment_ids, num_segments)
