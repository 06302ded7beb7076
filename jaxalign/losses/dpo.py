"""Direct preference optimisation and its variants (ALGORITHMS.md §3).

Inputs are per-sequence log-probs **summed over completion tokens** (see
:func:`jaxalign.losses.logprobs.sequence_logprobs`) and the completion token counts.
Notation: ``c = logπ(y_w) − logπ_ref(y_w)``, ``r = logπ(y_l) − logπ_ref(y_l)``,
``Δ = c − r``, ``σ`` the logistic sigmoid, ``ε`` the label smoothing.

Reference numbers: Hugging Face TRL 1.16, ``trl/trainer/dpo_trainer.py`` (``_compute_loss``)
and ``trl/experimental/cpo/cpo_trainer.py`` (``cpo_loss``, SimPO); the tests compare with
both. Differences from TRL 1.16, all from ALGORITHMS.md: ``sigmoid`` applies label smoothing
(cDPO; TRL 1.16 ignores it there); ``exo_pair`` uses ε = 1e-3 when the label smoothing is 0;
``bco_pair`` subtracts a running mean δ of the implicit rewards (TRL 1.16 uses δ = 0, which
is what you get without a ``bco_state``); ``aot_pair`` is TRL's ``aot_unpaired``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

from jaxalign.losses.names import DPO_ALIASES as _ALIASES  # noqa: F401 (re-exported)
from jaxalign.losses.names import DPO_LOSS_TYPES as LOSS_TYPES  # noqa: F401 (re-exported)
from jaxalign.losses.names import dpo_loss_types as _as_tuple  # noqa: F401 (re-exported)

Array = jax.Array

_NEEDS_LENGTHS = {"ipo", "sigmoid_norm", "simpo", "sft"}
_REFERENCE_FREE_TYPES = {"simpo", "sft"}


class BCOState(NamedTuple):
    """Running mean δ of the implicit rewards for ``bco_pair`` (a pytree of two scalars)."""

    mean: Array
    count: Array


def bco_init() -> BCOState:
    """Empty running mean (δ = 0)."""
    return BCOState(mean=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.float32))


def bco_update(state: BCOState, chosen_rewards: Array, rejected_rewards: Array, valid: Array | None = None) -> BCOState:
    """Merges the batch's implicit rewards ``{β·c} ∪ {β·r}`` into the running mean
    (BCO, Jung et al. 2024, arXiv:2404.04656): ``μ' = μ + (x̄ − μ)·n/(N + n)``, ``N' = N + n``.
    Rewards are treated as constants (no gradient). ``valid [B]``: only those pairs count."""
    rewards = jax.lax.stop_gradient(jnp.concatenate([chosen_rewards, rejected_rewards]))
    if valid is None:
        n = jnp.float32(rewards.shape[0])
        batch_mean = jnp.mean(rewards)
    else:
        v = jnp.concatenate([valid, valid]).astype(bool)
        n = jnp.sum(v).astype(jnp.float32)
        batch_mean = jnp.sum(jnp.where(v, rewards, 0.0)) / jnp.maximum(n, 1.0)
    total = state.count + n
    mean = state.mean + (batch_mean - state.mean) * n / jnp.maximum(total, 1.0)
    return BCOState(mean=mean.astype(jnp.float32), count=total)


def _smoothed_sigmoid(z: Array, eps) -> Array:
    """``−(1−ε) log σ(z) − ε log σ(−z)``."""
    return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array | None = None,
    ref_rejected_logps: Array | None = None,
    *,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
    beta: float | Array = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float | Array = 0.0,
    reference_free: bool = False,
    simpo_gamma: float | Array = 0.5,
    discopop_tau: float | Array = 0.05,
    rpo_alpha: float | Array | None = None,
    bco_state: BCOState | None = None,
    valid: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """DPO loss (Rafailov et al. 2023, arXiv:2305.18290) and variants, batch-mean.

    ==============  ==================================================================
    ``sigmoid``     ``−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)`` (cDPO when ε > 0)
    ``hinge``       ``relu(1 − βΔ)`` (SLiC, arXiv:2305.10425)
    ``ipo``         ``(Δ̄ − 1/(2β))²`` with ``Δ̄ = c/|y_w| − r/|y_l|`` (arXiv:2310.12036)
    ``robust``      ``[−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε)`` (rDPO, arXiv:2403.00409)
    ``exo_pair``    ``σ(βΔ)[log σ(βΔ) − log(1−ε)] + σ(−βΔ)[log σ(−βΔ) − log ε]``, ε = 1e-3 if 0
                    (EXO, arXiv:2402.00856)
    ``nca_pair``    ``−log σ(βc) − ½ log σ(−βc) − ½ log σ(−βr)`` (NCA, arXiv:2402.05369)
    ``bco_pair``    ``−log σ(βc − δ) − log σ(−(βr − δ))``, δ the running reward mean
                    (arXiv:2404.04656; δ = 0 without ``bco_state``)
    ``sppo_hard``   ``(c − 1/(2β))² + (r + 1/(2β))²`` (SPPO, arXiv:2405.00675)
    ``aot``         ``_smoothed_sigmoid(β·[sort(logπ_w − logπ_l) − sort(ref_w − ref_l)])``
                    sorted over the batch (AOT, arXiv:2406.05882)
    ``aot_pair``    same with ``sort(c) − sort(r)`` (TRL's ``aot_unpaired``)
    ``apo_zero``    ``(1 − σ(βc)) + σ(βr)`` (APO, arXiv:2408.06266)
    ``apo_down``    ``σ(βc) + (1 − σ(βΔ))``
    ``discopop``    ``m = σ(βΔ/τ)``: ``(1−m)·(−log σ(βΔ)) + m·exp(−βΔ)`` (arXiv:2406.08414)
    ``sigmoid_norm`` ``−log σ(β(c/|y_w| − r/|y_l|))``
    ``simpo``       ``−(1−ε) log σ(z) − ε log σ(−z)``, ``z = β(logπ_w/|y_w| − logπ_l/|y_l|) − γ``
                    (reference-free; arXiv:2405.14734)
    ``sft``         ``−Σ_b logπ(y_w,b) / Σ_b |y_w,b|``, token-mean NLL of the chosen
                    completions (RPO, arXiv:2404.19733)
    ==============  ==================================================================

    Lengths are clamped to ≥ 1. Several types may be mixed: ``loss = Σ_k w_k·mean_b ℓ_k``.
    ``rpo_alpha`` adds ``α·sft`` to the mix.

    Args:
      policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
      ref_chosen_logps, ref_rejected_logps: ``[B]`` reference log-probs (precomputed or
        from a frozen model); ignored (treated as 0) when ``reference_free``.
      chosen_lengths, rejected_lengths: ``[B]`` completion token counts; required by
        ``ipo``, ``sigmoid_norm``, ``simpo`` and ``sft``/``rpo_alpha``.
      beta: β (default 0.1).
      loss_type: a type or a sequence of types (static).
      loss_weights: weights of a mix (default all 1).
      label_smoothing: ε, used by sigmoid, robust, exo_pair, aot, aot_pair and simpo.
      reference_free: use a uniform reference (ref log-probs = 0).
      simpo_gamma: SimPO target margin γ (default 0.5).
      discopop_tau: DiscoPOP temperature τ (default 0.05).
      rpo_alpha: optional weight of the SFT term on the chosen completions.
      bco_state: running mean for ``bco_pair``; it is updated with this batch's rewards
        before use and returned as ``metrics["bco_state"]`` (pop it before logging).
      valid: optional ``[B]`` mask of the pairs that exist (packed batches have empty pair
        slots): every mean is over the valid pairs only, and empty slots get no gradient.
        Not with ``aot`` / ``aot_pair``, which sort over the whole batch.

    Returns:
      ``(loss, metrics)``: ``rewards/chosen`` (mean β·c), ``rewards/rejected`` (mean β·r),
      ``rewards/accuracies`` (mean ``c > r``), ``rewards/margins`` (mean β·Δ),
      ``logps/chosen``, ``logps/rejected``, and ``loss/<type>`` per type of a mix.
    """
    types = _as_tuple(loss_type)
    weights = (1.0,) * len(types) if loss_weights is None else tuple(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"{len(types)} loss types but {len(weights)} loss_weights")
    if rpo_alpha is not None:
        types, weights = types + ("sft",), weights + (rpo_alpha,)

    pw, pl = jnp.asarray(policy_chosen_logps), jnp.asarray(policy_rejected_logps)
    chex.assert_rank([pw, pl], 1)
    chex.assert_equal_shape([pw, pl])
    chex.assert_type([pw, pl], float)
    needs_ref = not reference_free and not set(types) <= _REFERENCE_FREE_TYPES
    if reference_free or ref_chosen_logps is None or ref_rejected_logps is None:
        if needs_ref:
            raise ValueError("ref_chosen_logps and ref_rejected_logps are required "
                             "unless reference_free=True")
        rw, rl = jnp.zeros_like(pw), jnp.zeros_like(pl)
    else:
        rw, rl = jnp.asarray(ref_chosen_logps), jnp.asarray(ref_rejected_logps)
        chex.assert_equal_shape([pw, rw, rl])
    if _NEEDS_LENGTHS & set(types) and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss types {sorted(_NEEDS_LENGTHS & set(types))} need "
                         "chosen_lengths and rejected_lengths")
    if chosen_lengths is not None:
        chex.assert_equal_shape([pw, chosen_lengths, rejected_lengths])
        len_w = jnp.maximum(jnp.asarray(chosen_lengths, pw.dtype), 1.0)
        len_l = jnp.maximum(jnp.asarray(rejected_lengths, pw.dtype), 1.0)
    if "robust" in types and isinstance(label_smoothing, (int, float)) and label_smoothing >= 0.5:
        raise ValueError("robust DPO needs label_smoothing < 0.5")

    if valid is None:
        mean = jnp.mean
    else:
        if {"aot", "aot_pair"} & set(types):
            raise ValueError("aot and aot_pair sort over the whole batch; they take no valid mask")
        chex.assert_equal_shape([pw, valid])
        valid = jnp.asarray(valid).astype(bool)
        n_valid = jnp.maximum(jnp.sum(valid), 1).astype(pw.dtype)

        def mean(x):
            return jnp.sum(jnp.where(valid, x, jnp.zeros((), x.dtype))) / n_valid.astype(x.dtype)

    c, r = pw - rw, pl - rl
    delta = c - r
    eps = label_smoothing
    bz = beta * delta
    metrics: dict = {}

    def per_pair(t: str) -> Array:
        if t == "sigmoid":
            return _smoothed_sigmoid(bz, eps)
        if t == "hinge":
            return jax.nn.relu(1.0 - bz)
        if t == "ipo":
            return jnp.square(c / len_w - r / len_l - 1.0 / (2.0 * beta))
        if t == "robust":
            return (-(1.0 - eps) * jax.nn.log_sigmoid(bz)
                    + eps * jax.nn.log_sigmoid(-bz)) / (1.0 - 2.0 * eps)
        if t == "exo_pair":
            e = jnp.where(jnp.asarray(eps) > 0, eps, 1e-3)
            return (jax.nn.sigmoid(bz) * (jax.nn.log_sigmoid(bz) - jnp.log1p(-e))
                    + jax.nn.sigmoid(-bz) * (jax.nn.log_sigmoid(-bz) - jnp.log(e)))
        if t == "nca_pair":
            return (-jax.nn.log_sigmoid(beta * c) - 0.5 * jax.nn.log_sigmoid(-beta * c)
                    - 0.5 * jax.nn.log_sigmoid(-beta * r))
        if t == "bco_pair":
            if bco_state is None:
                d = jnp.zeros((), pw.dtype)
            else:
                new_state = bco_update(bco_state, beta * c, beta * r, valid)
                metrics["bco_state"] = new_state
                d = new_state.mean
            return -jax.nn.log_sigmoid(beta * c - d) - jax.nn.log_sigmoid(-(beta * r - d))
        if t == "sppo_hard":
            return jnp.square(c - 0.5 / beta) + jnp.square(r + 0.5 / beta)
        if t == "aot":
            d = jnp.sort(pw - pl) - jnp.sort(rw - rl)
            return _smoothed_sigmoid(beta * d, eps)
        if t == "aot_pair":
            return _smoothed_sigmoid(beta * (jnp.sort(c) - jnp.sort(r)), eps)
        if t == "apo_zero":
            return (1.0 - jax.nn.sigmoid(beta * c)) + jax.nn.sigmoid(beta * r)
        if t == "apo_down":
            return jax.nn.sigmoid(beta * c) + (1.0 - jax.nn.sigmoid(bz))
        if t == "discopop":
            m = jax.nn.sigmoid(bz / discopop_tau)
            return (1.0 - m) * (-jax.nn.log_sigmoid(bz)) + m * jnp.exp(-bz)
        if t == "sigmoid_norm":
            return -jax.nn.log_sigmoid(beta * (c / len_w - r / len_l))
        if t == "simpo":
            return _smoothed_sigmoid(beta * (pw / len_w - pl / len_l) - simpo_gamma, eps)
        if t == "sft":
            if valid is not None:
                return jnp.broadcast_to(-jnp.sum(jnp.where(valid, pw, 0.0)) / jnp.sum(jnp.where(valid, len_w, 0.0)),
                                        pw.shape)
            return jnp.broadcast_to(-jnp.sum(pw) / jnp.sum(len_w), pw.shape)
        raise AssertionError(t)

    loss = jnp.zeros((), pw.dtype)
    for t, w in zip(types, weights):
        term = mean(per_pair(t))
        if len(types) > 1:
            metrics[f"loss/{t}"] = term
        loss = loss + w * term

    chosen_rewards = jax.lax.stop_gradient(beta * c)
    rejected_rewards = jax.lax.stop_gradient(beta * r)
    metrics.update({
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards).astype(pw.dtype)),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(jax.lax.stop_gradient(pw)),
        "logps/rejected": mean(jax.lax.stop_gradient(pl)),
    })
    return loss, metrics
