"""Critic-free policy-gradient losses of the GRPO family: GRPO, Dr. GRPO, DAPO, GSPO, CISPO and
RLOO's sequence-level ratio (ALGORITHMS.md §6), plus DAPO's overlong reward shaping.

Token arrays are ``[B, T]`` with a mask of real completion tokens; advantages are per sequence
(``[B, 1]``, broadcast) or per token (``[B, T]``). Every loss is built from three independent
choices, each a static string:

- the **importance weight** (``importance_sampling``): per token ``ρ_t = π_t/π_old,t``; per
  sequence, length-normalised (GSPO); GSPO-token; or RLOO's unnormalised sequence ratio;
- the **surrogate** (``loss``): PPO's clipped ``−min(ρA, clip(ρ)A)`` (asymmetric bounds: DAPO's
  clip-higher) or CISPO's ``−sg(min(ρ, 1 + ε_high)) · A · log π``;
- the **aggregation** over tokens and sequences, named after TRL's ``loss_type``.

A sequence-level weight is broadcast over the sequence's tokens, so the per-token loss is the
same for every token of a sequence and ``aggregation="grpo"`` (mean over a sequence's tokens,
then over sequences) gives exactly the per-sequence objective.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jaxalign.losses.logprobs import masked_count, masked_mean, masked_sum
from jaxalign.losses.names import (
    AGGREGATION_ALIASES,
    AGGREGATIONS,
    IMPORTANCE_SAMPLING,
    SURROGATES,
    canonical_aggregation,
)

Array = jax.Array


def aggregate(
    loss_t: Array,
    mask: Array,
    aggregation: str = "dapo",
    *,
    max_completion_length: int | None = None,
) -> Array:
    """Reduces a per-token loss ``ℓ_{i,t}`` ``[B, T]`` over the real tokens ``m_{i,t}``:

    - ``grpo`` (alias ``sequence_mean``): ``1/B' Σ_i (Σ_t m ℓ / Σ_t m)``, the mean over the ``B'``
      sequences with at least one token of each sequence's token mean (DeepSeekMath,
      arXiv:2402.03300; biased towards short positive and long negative completions);
    - ``bnpo`` / ``dapo`` (alias ``token_mean``): ``Σ_{i,t} m ℓ / Σ_{i,t} m``, the token mean over
      the batch (DAPO, arXiv:2503.14476 eq. 8). In TRL ``bnpo`` normalises by the local batch and
      ``dapo`` by the global one; here a micro-batch's weight tells them apart (see ``weight``);
    - ``dr_grpo``: ``Σ_{i,t} m ℓ / (B · L_max)`` with ``L_max = max_completion_length`` (Dr. GRPO,
      Liu et al. 2025, arXiv:2503.20783: a constant normaliser, no length bias).
    """
    chex.assert_equal_shape([loss_t, mask])
    name = canonical_aggregation(aggregation)
    if name in ("bnpo", "dapo"):
        return masked_mean(loss_t, mask)
    if name == "grpo":
        per_seq = masked_mean(loss_t, mask, axis=-1)
        has = masked_count(mask, axis=-1) > 0
        return jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(jnp.sum(has), 1)
    if max_completion_length is None or max_completion_length <= 0:
        raise ValueError(f"aggregation 'dr_grpo' needs max_completion_length > 0, got {max_completion_length}")
    return masked_sum(loss_t, mask) / (loss_t.shape[0] * max_completion_length)


def weight(mask: Array, aggregation: str = "dapo") -> Array:
    """The number of units :func:`aggregate` averages over, for exact gradient accumulation
    (the loop sums micro-batch losses times their weight, then divides by the total): tokens
    (``dapo``: the global token mean), sequences with a token (``grpo``), rows (``dr_grpo``),
    or 1 (``bnpo``: each micro-batch's own token mean counts once, as TRL's local batch)."""
    name = canonical_aggregation(aggregation)
    if name == "dapo":
        return masked_count(mask)
    if name == "grpo":
        return jnp.sum(masked_count(mask, axis=-1) > 0).astype(jnp.float32)
    if name == "dr_grpo":
        return jnp.asarray(mask.shape[0], jnp.float32)
    return jnp.ones((), jnp.float32)


def log_importance_weights(logps: Array, logps_old: Array, mask: Array, level: str = "token") -> Array:
    """``log w_{i,t}`` ``[B, T]`` (0 at padding) for ``w = π/π_old`` at ``level``:

    - ``token``: ``log ρ_{i,t} = log π_{i,t} − log π_old,{i,t}`` (PPO, GRPO);
    - ``sequence``: GSPO's length-normalised sequence ratio (Zheng et al. 2025, arXiv:2507.18071
      eq. 7), ``log s_i = 1/|y_i| Σ_t (log π − log π_old)``, broadcast over the sequence;
    - ``sequence_token``: GSPO-token (arXiv:2507.18071 eq. 13), ``s_{i,t} = sg[s_i] · π_{i,t} /
      sg[π_{i,t}]``: equal to ``s_i`` in value, but each token's gradient is its own ``∇ log π_t``
      scaled by ``s_i`` (so per-token advantages are possible);
    - ``sequence_sum``: the plain sequence ratio ``log ρ_i = Σ_t (log π − log π_old)``
      (``π(y)/π_old(y)``), as TRL's ``RLOOTrainer`` and the RLOO paper (arXiv:2402.14740).
    """
    chex.assert_rank([logps, logps_old, mask], 2)
    chex.assert_equal_shape([logps, logps_old, mask])
    valid = mask.astype(bool)
    log_ratio = jnp.where(valid, logps - logps_old, 0.0)
    if level == "token":
        return log_ratio
    seq = jnp.sum(log_ratio, axis=-1, keepdims=True)
    if level == "sequence_sum":
        return jnp.where(valid, seq, 0.0)
    seq = seq / jnp.maximum(masked_count(valid, axis=-1)[:, None], 1.0)
    if level == "sequence":
        return jnp.where(valid, seq, 0.0)
    if level == "sequence_token":
        out = lax.stop_gradient(seq) + logps - lax.stop_gradient(logps)
        return jnp.where(valid, out, 0.0)
    raise ValueError(f"importance_sampling must be one of {IMPORTANCE_SAMPLING}, got {level!r}")


def group_policy_loss(
    logps: Array,
    logps_old: Array,
    advantages: Array,
    mask: Array,
    *,
    loss: str = "clip",
    importance_sampling: str = "token",
    clip_eps: float | Array = 0.2,
    clip_eps_high: float | Array | None = None,
    aggregation: str = "dapo",
    max_completion_length: int | None = None,
    ref_logps: Array | None = None,
    beta: float | Array = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """The GRPO-family policy loss: a per-token surrogate ``ℓ_{i,t}``, plus ``β · k3`` to the
    reference when ``ref_logps`` is given, reduced by :func:`aggregate`. With ``w`` the importance
    weight of :func:`log_importance_weights`:

    - ``loss="clip"`` (PPO/GRPO; arXiv:1707.06347, arXiv:2402.03300):
      ``ℓ = −min(w A, clip(w, 1 − ε, 1 + ε_high) A)``; ``ε_high > ε`` is DAPO's clip-higher
      (arXiv:2503.14476 eq. 10, ε = 0.2, ε_high = 0.28). GSPO (``importance_sampling="sequence"``)
      clips whole sequences; its paper uses ε = 3e-4, ε_high = 4e-4.
    - ``loss="cispo"`` (MiniMax-M1, arXiv:2506.13585 eq. 4): ``ℓ = −sg(min(w, 1 + ε_high)) · A ·
      log π_t``: the IS weight is clipped and detached instead of the update, so every token keeps
      a gradient (``ε_low`` unused: the paper sets no lower bound). TRL's ``epsilon_high=5`` is
      ``clip_eps_high=4`` here.

    ``k3 = exp(ref − log π) − (ref − log π) − 1`` per token (GRPO's KL, arXiv:2402.03300 eq. 4).

    Args:
      logps: ``[B, T]`` log-probs under the current policy (with gradient).
      logps_old: ``[B, T]`` log-probs of the sampling policy (constants).
      advantages: ``[B, 1]`` per-sequence (or ``[B, T]`` per-token) advantages.
      mask: ``[B, T]`` real completion tokens.
      loss / importance_sampling / aggregation: see above (static).
      clip_eps, clip_eps_high: ε and ε_high (``None``: ε).
      max_completion_length: ``L_max`` of ``aggregation="dr_grpo"``.
      ref_logps, beta: the reference's ``[B, T]`` log-probs and the KL coefficient β.

    Returns:
      ``(loss, metrics)``: ``clipfrac`` (fraction of tokens whose clipped term is active; CISPO:
      whose weight was truncated), ``clip_low`` / ``clip_high`` (tokens clipped below with
      ``A < 0`` / above with ``A > 0``, as TRL's ``clip_ratio``), ``approx_kl`` (k3 of the token
      log-ratio, KL(π_old‖π)), ``ratio`` (mean weight ``w``), ``kl_ref`` with a reference.
    """
    chex.assert_rank([logps, logps_old, advantages, mask], 2)
    chex.assert_equal_shape([logps, logps_old, mask])
    chex.assert_type([logps, logps_old], float)
    if loss not in SURROGATES:
        raise ValueError(f"loss must be one of {SURROGATES}, got {loss!r}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    valid = mask.astype(bool)
    log_w = log_importance_weights(logps, logps_old, mask, importance_sampling)
    w = jnp.exp(log_w)
    adv = jnp.broadcast_to(advantages, logps.shape)
    if loss == "clip":
        unclipped = -adv * w
        clipped = -adv * jnp.clip(w, 1.0 - clip_eps, 1.0 + high)
        loss_t = jnp.maximum(unclipped, clipped)
        active = clipped > unclipped
    else:
        is_weight = lax.stop_gradient(jnp.minimum(w, 1.0 + high))
        loss_t = -is_weight * adv * jnp.where(valid, logps, 0.0)
        active = lax.stop_gradient(w) > 1.0 + high
    w_sg = lax.stop_gradient(w)
    metrics = {
        "clipfrac": masked_mean(active.astype(jnp.float32), valid),
        "clip_low": masked_mean(((w_sg < 1.0 - clip_eps) & (adv < 0)).astype(jnp.float32), valid),
        "clip_high": masked_mean(((w_sg > 1.0 + high) & (adv > 0)).astype(jnp.float32), valid),
        "ratio": masked_mean(w_sg, valid),
    }
    if ref_logps is not None:
        chex.assert_equal_shape([logps, ref_logps])
        d = ref_logps - logps
        k3 = jnp.expm1(d) - d
        loss_t = loss_t + beta * k3
        metrics["kl_ref"] = masked_mean(lax.stop_gradient(k3), valid)
    lr = lax.stop_gradient(jnp.where(valid, logps - logps_old, 0.0))
    metrics["approx_kl"] = masked_mean(jnp.expm1(lr) - lr, valid)
    out = aggregate(loss_t, valid, aggregation, max_completion_length=max_completion_length)
    return out, metrics


def overlong_penalty(lengths: Array, max_length: int, buffer: int) -> Array:
    """DAPO's soft overlong punishment (arXiv:2503.14476 eq. 13), added to the reward:

    ``R(|y|) = 0`` for ``|y| ≤ L_max − L_cache``; ``((L_max − L_cache) − |y|) / L_cache`` in the
    window ``L_max − L_cache < |y| ≤ L_max`` (from 0 down to −1); ``−1`` beyond ``L_max``.

    Args:
      lengths: ``[N]`` completion lengths ``|y|`` (tokens).
      max_length: ``L_max``. buffer: ``L_cache`` (``0 < L_cache ≤ L_max``).

    Returns:
      ``[N]`` float32 penalties in ``[−1, 0]``.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    y = jnp.asarray(lengths, jnp.float32)
    start = float(max_length - buffer)
    window = (start - y) / float(buffer)
    return jnp.where(y <= start, 0.0, jnp.where(y <= max_length, window, -1.0))
