"""PPO for language models and the PPO-max recipe (MOSS-RLHF, arXiv:2307.04964).

Token arrays are ``[B, T]`` with a mask of real completion tokens (right padding; the
completion is one contiguous block, so positions after the last real token are padding).
Where a mask is given, the values at masked positions never influence the result.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jaxalign.losses.logprobs import masked_count, masked_mean, masked_sum
from jaxalign.losses.names import KL_ESTIMATORS  # noqa: F401 (re-exported)

Array = jax.Array


def kl_penalty(logps: Array, ref_logps: Array, estimator: str = "k1") -> Array:
    """Per-token estimators of ``KL(π ‖ π_ref)`` from samples of π (Schulman 2020,
    "Approximating KL divergence"), with ``Δ = log π − log π_ref``:

    ``k1 = Δ`` (unbiased, can be negative), ``k2 = Δ²/2`` (biased, low variance),
    ``k3 = exp(−Δ) − 1 + Δ`` (unbiased, ≥ 0; GRPO's KL term, arXiv:2402.03300).

    Args:
      logps, ref_logps: per-token log-probs of the sampled tokens, same shape.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (static).
    """
    chex.assert_equal_shape([logps, ref_logps])
    chex.assert_type([logps, ref_logps], float)
    d = logps - ref_logps
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


# --------------------------------------------------------------------------- scores

class RunningMoments(NamedTuple):
    """Running count, mean and sum of squared deviations (M2) of all scores seen so far."""

    count: Array
    mean: Array
    m2: Array


def running_moments_init() -> RunningMoments:
    z = jnp.zeros((), jnp.float32)
    return RunningMoments(count=z, mean=z, m2=z)


def running_moments_update(
    state: RunningMoments, x: Array, mask: Array | None = None
) -> RunningMoments:
    """Merges a batch into the running moments with Chan et al.'s parallel formula
    (Chan, Golub & LeVeque 1979): with batch moments ``(n_b, μ_b, M2_b)`` and
    ``δ = μ_b − μ``, ``n' = n + n_b``, ``μ' = μ + δ·n_b/n'``,
    ``M2' = M2 + M2_b + δ²·n·n_b/n'``. An empty batch leaves the state unchanged."""
    x = jnp.asarray(x, jnp.float32)
    mask = jnp.ones(x.shape, bool) if mask is None else mask.astype(bool)
    chex.assert_equal_shape([x, mask])
    n_b = masked_count(mask)
    mean_b = masked_mean(x, mask)
    m2_b = masked_sum(jnp.square(x - mean_b), mask)
    n = state.count + n_b
    delta = mean_b - state.mean
    safe_n = jnp.maximum(n, 1.0)
    return RunningMoments(
        count=n,
        mean=state.mean + delta * n_b / safe_n,
        m2=state.m2 + m2_b + jnp.square(delta) * state.count * n_b / safe_n,
    )


def running_moments_std(state: RunningMoments) -> Array:
    """Sample standard deviation ``sqrt(M2 / (n − 1))``; 1 while fewer than 2 scores were seen."""
    return jnp.where(state.count > 1, jnp.sqrt(state.m2 / jnp.maximum(state.count - 1, 1.0)), 1.0)


def normalize_and_clip(
    scores: Array, state: RunningMoments, clip: float | Array | None = 5.0, eps: float = 1e-8
) -> Array:
    """PPO-max score processing: ``clip((s − μ)/(σ + eps), −δ, δ)`` with the running μ, σ
    (arXiv:2307.04964 §5.3; δ ≈ 0.3–0.8 in the paper, 5 is safe). ``clip=None`` skips clipping."""
    out = (scores - state.mean) / (running_moments_std(state) + eps)
    return out if clip is None else jnp.clip(out, -clip, clip)


def update_and_normalize(
    state: RunningMoments, scores: Array, clip: float | Array | None = 5.0, eps: float = 1e-8
) -> tuple[RunningMoments, Array]:
    """Merges ``scores`` into the moments, then normalises and clips them with the new moments."""
    state = running_moments_update(state, scores)
    return state, normalize_and_clip(scores, state, clip, eps)


# --------------------------------------------------------------------------- rewards / GAE

def last_token_index(mask: Array) -> Array:
    """Index of the last non-zero entry of each row of ``mask`` ``[B, T]`` (0 if none)."""
    chex.assert_rank(mask, 2)
    t = mask.shape[-1]
    pos = jnp.where(mask.astype(bool), jnp.arange(t), -1)
    return jnp.maximum(jnp.max(pos, axis=-1), 0)


def per_token_rewards(
    scores: Array,
    logps_old: Array,
    ref_logps: Array,
    mask: Array,
    *,
    kl_coef: float | Array = 0.05,
    estimator: str = "k1",
) -> tuple[Array, Array]:
    """Per-token RLHF rewards (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022):

    ``r_t = −η · KL_t`` on every real completion token, plus the (processed) sequence score
    on the **last real token**, found from the mask (never from token values, so pad == EOS
    cannot hide it). Padding gets 0.

    Args:
      scores: ``[B]`` sequence scores (e.g. after :func:`normalize_and_clip`).
      logps_old, ref_logps: ``[B, T]`` log-probs of the sampled tokens (at the sampling
        temperature) under the rollout policy and the reference.
      mask: ``[B, T]`` real completion tokens.
      kl_coef: η (scalar, may come from :func:`adaptive_kl_coef`).
      estimator: KL estimator for the penalty (``k1`` by default, as PPO-max).

    Returns:
      ``(rewards [B, T], kl [B, T])`` with ``kl`` the masked per-token estimate.
    """
    chex.assert_rank([scores, logps_old, ref_logps, mask], [1, 2, 2, 2])
    chex.assert_equal_shape([logps_old, ref_logps, mask])
    chex.assert_equal_shape_prefix([scores, mask], 1)
    valid = mask.astype(bool)
    kl = jnp.where(valid, kl_penalty(logps_old, ref_logps, estimator), 0.0)
    last = last_token_index(mask)
    has_tokens = jnp.any(valid, axis=-1)
    at_last = (jnp.arange(mask.shape[-1])[None, :] == last[:, None]) & has_tokens[:, None]
    rewards = -kl_coef * kl + jnp.where(at_last, scores[:, None], 0.0)
    return rewards.astype(jnp.float32), kl


def gae(
    rewards: Array,
    values: Array,
    mask: Array,
    *,
    gamma: float | Array = 1.0,
    lam: float | Array = 0.95,
) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv:1506.02438), computed
    with ``lax.scan`` in reverse over time:

    ``δ_t = r_t + γ·V_{t+1} − V_t``, ``A_t = δ_t + γλ·A_{t+1}``, ``R_t = A_t + V_t``,

    where ``V_{t+1}`` and ``A_{t+1}`` are 0 beyond the last real token (the episode ends
    there: no bootstrap from padding). Masked positions get ``A = R = 0``; their rewards and
    values are never read.

    Args:
      rewards: ``[B, T]`` per-token rewards.
      values: ``[B, T]`` critic values ``V_t`` of the rollout policy.
      mask: ``[B, T]`` real completion tokens.
      gamma, lam: discount γ (PPO-max: 1) and GAE λ (0.95).

    Returns:
      ``(advantages, returns)``, both ``[B, T]`` float32.
    """
    chex.assert_rank([rewards, values, mask], 2)
    chex.assert_equal_shape([rewards, values, mask])
    valid = mask.astype(bool)
    r = jnp.where(valid, rewards, 0.0).astype(jnp.float32)
    v = jnp.where(valid, values, 0.0).astype(jnp.float32)

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_value - v_t
        adv = jnp.where(m_t, delta + gamma * lam * next_adv, 0.0)
        # A masked step passes zeros backwards, so the last real token sees V_{t+1} = 0.
        return (jnp.where(m_t, v_t, 0.0), adv), adv

    zeros = jnp.zeros(r.shape[:1], jnp.float32)
    _, adv = lax.scan(step, (zeros, zeros), (r.T, v.T, valid.T), reverse=True)
    adv = adv.T
    returns = jnp.where(valid, adv + v, 0.0)
    return adv, returns


# --------------------------------------------------------------------------- losses

def _aggregate(x: Array, mask: Array, aggregation: str) -> Array:
    if aggregation == "token_mean":
        return masked_mean(x, mask)
    if aggregation == "sequence_mean":
        per_seq = masked_mean(x, mask, axis=-1)
        has = masked_count(mask, axis=-1) > 0
        return jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(jnp.sum(has), 1)
    raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', got {aggregation!r}")


def policy_loss(
    logps: Array,
    logps_old: Array,
    advantages: Array,
    mask: Array,
    *,
    clip_eps: float | Array = 0.2,
    clip_eps_high: float | Array | None = None,
    dual_clip: float | Array | None = None,
    aggregation: str = "token_mean",
) -> tuple[Array, dict[str, Array]]:
    """Clipped surrogate policy loss (PPO, Schulman et al. 2017, arXiv:1707.06347):

    ``ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε_high))``, ``ρ_t = exp(logπ_t − logπ_old,t)``;

    with ``dual_clip = c > 1`` (Ye et al. 2020, arXiv:1912.09729), tokens with ``A_t < 0``
    use ``min(ℓ_t, −c·A_t)``. The loss is the masked token mean over the batch
    (``aggregation="sequence_mean"``: mean over tokens, then over sequences).

    Args:
      logps: ``[B, T]`` log-probs under the current policy (with gradient).
      logps_old: ``[B, T]`` log-probs of the rollout policy (constants).
      advantages: ``[B, T]`` (or ``[B, 1]`` for sequence-level advantages, broadcast).
      mask: ``[B, T]`` real completion tokens.
      clip_eps: ε (default 0.2); ``clip_eps_high`` defaults to ε.

    Returns:
      ``(loss, metrics)``: ``clipfrac`` (fraction of tokens where the clipped term is
      active), ``approx_kl`` (mean ``(ρ−1) − log ρ``, the k3 estimator of KL(π_old‖π)),
      ``ratio`` (mean ρ), and ``dual_clipfrac`` when ``dual_clip`` is set.
    """
    chex.assert_rank([logps, logps_old, advantages, mask], 2)
    chex.assert_equal_shape([logps, logps_old, mask])
    chex.assert_type([logps, logps_old], float)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    valid = mask.astype(bool)
    log_ratio = jnp.where(valid, logps - logps_old, 0.0)
    ratio = jnp.exp(log_ratio)
    adv = jnp.broadcast_to(advantages, logps.shape)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    loss_t = jnp.maximum(unclipped, clipped)
    metrics = {"clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), valid)}
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual_active = (adv < 0) & (loss_t > bound)
        loss_t = jnp.where(adv < 0, jnp.minimum(loss_t, bound), loss_t)
        metrics["dual_clipfrac"] = masked_mean(dual_active.astype(jnp.float32), valid)
    loss = _aggregate(loss_t, valid, aggregation)
    lr = lax.stop_gradient(log_ratio)
    metrics["approx_kl"] = masked_mean(jnp.expm1(lr) - lr, valid)
    metrics["ratio"] = masked_mean(lax.stop_gradient(ratio), valid)
    return loss, metrics


def value_loss(
    values: Array,
    values_old: Array,
    returns: Array,
    mask: Array,
    *,
    clip_eps: float | Array | None = 0.2,
    aggregation: str = "token_mean",
) -> tuple[Array, dict[str, Array]]:
    """Clipped value loss (PPO2 baselines; PPO-max):

    ``0.5 · mean_t max((V_t − R_t)², (clip(V_t, V_old,t ± ε) − R_t)²)``;
    ``clip_eps=None`` gives the unclipped ``0.5 · mean (V − R)²``.

    Args:
      values: ``[B, T]`` current critic values (with gradient).
      values_old: ``[B, T]`` values at rollout time.
      returns: ``[B, T]`` GAE returns.
      mask: ``[B, T]`` real completion tokens.

    Returns:
      ``(loss, metrics)``: ``vf_clipfrac`` (fraction where the clip moved the value,
      ``|V − V_old| > ε``, and the clipped error is the larger: TRL's metric without the tokens
      that only a rounding of ``V_old + (V − V_old)`` counts),
      ``value_error`` (masked mean ``(V − R)²``).
    """
    chex.assert_rank([values, values_old, returns, mask], 2)
    chex.assert_equal_shape([values, values_old, returns, mask])
    valid = mask.astype(bool)
    err = jnp.square(values - returns)
    if clip_eps is None:
        loss_t = err
        clipfrac = jnp.zeros((), jnp.float32)
    else:
        v_clip = values_old + jnp.clip(values - values_old, -clip_eps, clip_eps)
        err_clip = jnp.square(v_clip - returns)
        loss_t = jnp.maximum(err, err_clip)
        # Clipped only where the clip moved the value: inside the range, v_old + (v - v_old) can
        # differ from v in the last bit, and counting those roundings (TRL's err_clip > err) made
        # the metric a coin toss per token (two runs differing in summation order disagreed by 0.01).
        active = (jnp.abs(values - values_old) > clip_eps) & (err_clip > err)
        clipfrac = masked_mean(active.astype(jnp.float32), valid)
    loss = 0.5 * _aggregate(loss_t, valid, aggregation)
    return loss, {"vf_clipfrac": clipfrac, "value_error": masked_mean(lax.stop_gradient(err), valid)}


def adaptive_kl_coef(
    kl_coef: Array | float,
    observed_kl: Array | float,
    n_steps: Array | int,
    *,
    target: float,
    horizon: float,
) -> Array:
    """Adaptive KL controller (Ziegler et al. 2019, arXiv:1909.08593, §2.2):

    ``e = clip(KL/KL_target − 1, −0.2, 0.2)``, ``η' = η · (1 + e · n_steps / horizon)``.

    Args:
      kl_coef: current η.
      observed_kl: mean KL (per sequence, summed over tokens) of the last batch.
      n_steps: number of samples (or steps) in that batch.
      target: KL_target (e.g. 6.0).
      horizon: horizon (e.g. 10000).

    Returns:
      The new η (float32 scalar).
    """
    err = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return jnp.asarray(kl_coef, jnp.float32) * (1.0 + err * jnp.asarray(n_steps, jnp.float32) / horizon)
