"""RAFT: reward-ranked fine-tuning selection (Dong et al. 2023, arXiv:2304.06767).

Selection returns index and mask arrays of static shape, so it runs inside ``jit``; the
kept (prompt, completion) pairs are then trained on with the SFT loss (completion tokens
only). Filtered (degenerate) samples carry reward ``−inf`` and are never kept.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp

from jaxalign.losses.names import num_top

Array = jax.Array


def best_of_k(rewards: Array) -> tuple[Array, Array]:
    """Local ranking: the best of the K samples of each prompt (K = 1/α).

    Args:
      rewards: ``[N, K]`` rewards of K samples for each of N prompts.

    Returns:
      ``(index [N], keep [N, K])``: the argmax per prompt (ties: the first sample) and a
      one-hot keep mask, all False for a prompt whose samples were all filtered (``−inf``).
    """
    chex.assert_rank(rewards, 2)
    chex.assert_type(rewards, float)
    idx = jnp.argmax(rewards, axis=-1)
    best = jnp.take_along_axis(rewards, idx[:, None], axis=-1)[:, 0]
    onehot = jnp.arange(rewards.shape[-1])[None, :] == idx[:, None]
    keep = onehot & (best > -jnp.inf)[:, None]
    return idx, keep


def top_fraction(rewards: Array, fraction: float) -> tuple[Array, Array]:
    """Global ranking: keep the top ``α`` fraction of the batch (one sample per prompt).

    Args:
      rewards: ``[B]`` rewards.
      fraction: α (static), e.g. 0.125.

    Returns:
      ``(index [k], keep [B])`` with ``k = num_top(B, α)``: indices of the k largest rewards
      (descending; ties broken by position) and the keep mask. Filtered samples
      (``−inf``) are never kept, so ``keep`` may have fewer than k entries; the matching
      entries of ``index`` then point at filtered samples.
    """
    chex.assert_rank(rewards, 1)
    chex.assert_type(rewards, float)
    k = num_top(rewards.shape[0], fraction)
    order = jnp.argsort(-rewards, stable=True)[:k]
    keep = jnp.zeros(rewards.shape, bool).at[order].set(True) & (rewards > -jnp.inf)
    return order, keep


def filter_rewards(
    rewards: Array,
    completion_ids: Array,
    completion_mask: Array,
    *,
    min_length: int | None = None,
    forbidden_ids: Sequence[int] | Array | None = None,
) -> Array:
    """Reward-hacking filters: degenerate samples get ``−inf``.

    A sample is degenerate if it has fewer than ``min_length`` real completion tokens
    (counted from the mask) or if any real completion token is in ``forbidden_ids``
    (padding is never inspected, so a pad id may be forbidden).

    Args:
      rewards: ``[B]`` rewards.
      completion_ids: ``[B, T]`` completion token ids.
      completion_mask: ``[B, T]`` real completion tokens.
      min_length: minimum number of real tokens.
      forbidden_ids: token ids that disqualify a sample.

    Returns:
      ``[B]`` rewards with ``−inf`` for degenerate samples.
    """
    chex.assert_rank([rewards, completion_ids, completion_mask], [1, 2, 2])
    chex.assert_equal_shape([completion_ids, completion_mask])
    chex.assert_type(completion_ids, int)
    valid = completion_mask.astype(bool)
    bad = jnp.zeros(rewards.shape, bool)
    if min_length is not None:
        bad = bad | (jnp.sum(valid, axis=-1) < min_length)
    if forbidden_ids is not None:
        forbidden = jnp.asarray(forbidden_ids, completion_ids.dtype).reshape(-1)
        hit = jnp.isin(completion_ids, forbidden) & valid
        bad = bad | jnp.any(hit, axis=-1)
    return jnp.where(bad, -jnp.inf, rewards)


def selection_metrics(rewards: Array, keep: Array) -> dict[str, Array]:
    """``reward/all`` (mean over non-filtered samples), ``reward/kept`` (mean over kept
    samples), ``kept_fraction`` and ``filtered_fraction``."""
    chex.assert_equal_shape([rewards, keep])
    finite = jnp.isfinite(rewards)
    keep = keep.astype(bool)

    def mean(sel):
        return jnp.sum(jnp.where(sel, rewards, 0.0)) / jnp.maximum(jnp.sum(sel), 1)

    return {
        "reward/all": mean(finite),
        "reward/kept": mean(keep & finite),
        "kept_fraction": jnp.mean(keep.astype(jnp.float32)),
        "filtered_fraction": jnp.mean((~finite).astype(jnp.float32)),
    }
