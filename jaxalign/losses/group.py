"""Critic-free group-relative advantages: GRPO and RLOO (ALGORITHMS.md §6).

Rewards are ``[N, G]``: ``G`` completions for each of ``N`` prompts (reshape TRL's flat,
prompt-major ``[N·G]`` layout with ``rewards.reshape(N, G)``). An optional validity mask
removes completions (e.g. unscorable ones) from every baseline and statistic; they get
advantage 0.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxalign.losses.logprobs import masked_count, masked_mean, masked_sum

Array = jax.Array

SCALES = ("group", "batch", "none")


def _prep(rewards: Array, mask: Array | None) -> tuple[Array, Array]:
    chex.assert_rank(rewards, 2)
    chex.assert_type(rewards, float)
    mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
    chex.assert_equal_shape([rewards, mask])
    return jnp.where(mask, rewards, 0.0), mask


def _std(x: Array, mask: Array, axis) -> Array:
    """Unbiased (n − 1) standard deviation over ``axis``; NaN-free (0 when n < 2)."""
    n = masked_count(mask, axis=axis)
    mean = masked_sum(x, mask, axis=axis) / jnp.maximum(n, 1.0)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    sq = masked_sum(jnp.square(x - mean), mask, axis=axis)
    return jnp.where(n > 1, jnp.sqrt(sq / jnp.maximum(n - 1.0, 1.0)), 0.0)


def grpo_advantages(
    rewards: Array,
    mask: Array | None = None,
    *,
    scale: str = "group",
    eps: float = 1e-4,
) -> Array:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300):

    ``A_{n,i} = (r_{n,i} − mean_i r_{n,·}) / (s + eps)`` with ``s`` the **unbiased** standard
    deviation of the group (``scale="group"``), of the whole batch (``"batch"``, the
    mean is still the group's; Liu et al. 2025, arXiv:2503.20783 argue against the group
    std), or no division (``"none"``, Dr. GRPO). Matches TRL's ``GRPOTrainer`` (``nanstd``
    with Bessel's correction, eps 1e-4).

    Args:
      rewards: ``[N, G]`` rewards.
      mask: optional ``[N, G]`` validity mask.
      scale: ``"group"``, ``"batch"`` or ``"none"`` (static).

    Returns:
      ``[N, G]`` advantages (0 at invalid entries).
    """
    r, mask = _prep(rewards, mask)
    mean = masked_mean(r, mask, axis=-1)[:, None]
    adv = r - mean
    if scale == "group":
        adv = adv / (_std(r, mask, axis=-1)[:, None] + eps)
    elif scale == "batch":
        adv = adv / (_std(r, mask, axis=None) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return jnp.where(mask, adv, 0.0)


def rloo_advantages(
    rewards: Array,
    mask: Array | None = None,
    *,
    normalize: bool = False,
    eps: float = 1e-4,
) -> Array:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024,
    arXiv:2402.14740):

    ``A_{n,i} = r_{n,i} − 1/(G−1) · Σ_{j≠i} r_{n,j}`` (over the valid completions of the
    prompt; 0 when a prompt has a single valid completion). ``normalize`` then whitens over
    the batch, ``(A − mean A)/(std A + eps)`` (TRL's ``normalize_advantages``).

    Args:
      rewards: ``[N, G]`` rewards, usually KL-shaped by :func:`kl_shaped_rewards`.
      mask: optional ``[N, G]`` validity mask.

    Returns:
      ``[N, G]`` advantages (0 at invalid entries).
    """
    r, mask = _prep(rewards, mask)
    n = masked_count(mask, axis=-1)[:, None]
    total = jnp.sum(r, axis=-1, keepdims=True)
    baseline = (total - r) / jnp.maximum(n - 1.0, 1.0)
    adv = jnp.where(mask & (n > 1), r - baseline, 0.0)
    if normalize:
        adv = (adv - masked_mean(adv, mask)) / (_std(adv, mask, axis=None) + eps)
    return jnp.where(mask, adv, 0.0)


def kl_shaped_rewards(
    scores: Array,
    logps_old: Array,
    ref_logps: Array,
    completion_mask: Array,
    *,
    kl_coef: float | Array = 0.05,
) -> Array:
    """Sequence-level KL-penalised reward for RLOO:
    ``R = score − β · Σ_t m_t (logπ_old,t − logπ_ref,t)`` (k1 summed over completion tokens).

    Args:
      scores: ``[...]`` sequence scores (``[N·G]`` or ``[N, G]``).
      logps_old, ref_logps, completion_mask: ``[..., T]`` per-token arrays.

    Returns:
      Rewards with the shape of ``scores``.
    """
    chex.assert_equal_shape([logps_old, ref_logps, completion_mask])
    chex.assert_equal_shape_prefix([scores, completion_mask], scores.ndim)
    chex.assert_rank(completion_mask, scores.ndim + 1)
    kl = masked_sum(logps_old - ref_logps, completion_mask, axis=-1)
    return scores - kl_coef * kl
