"""Kahneman-Tversky optimisation (KTO; Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired
completions, each labelled desirable or undesirable.

Inputs are per-sequence log-probs **summed over completion tokens** (see
:func:`jaxalign.losses.logprobs.sequence_logprobs`). Notation: ``r = logπ(y|x) − logπ_ref(y|x)``
for a row's own completion, σ the logistic sigmoid, ``z₀`` the reference point.

The reference point is the paper's estimate of ``KL(π‖π_ref)``: the mean log-ratio of
*mismatched* pairs ``(x_i, y_j)``, j ≠ i, from the same batch (the caller builds them by
shifting the completions by one row, as TRL does), clamped at 0 and treated as a constant
(no gradient flows through it). Reference numbers: Hugging Face TRL 1.16,
``trl/trainer/kto_trainer.py`` (``_compute_loss``); the tests compare with a port of it.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxalign.losses.names import KTO_LOSS_TYPES as LOSS_TYPES  # noqa: F401 (re-exported)

Array = jax.Array


def kto_kl(policy_kl_logps: Array, ref_kl_logps: Array) -> Array:
    """The reference point ``z₀ = max(0, mean_i [logπ(y'_i|x_i) − logπ_ref(y'_i|x_i)])`` over the
    mismatched pairs ``(x_i, y'_i)`` of a batch, with its gradient stopped (KTO, eq. 7)."""
    pk, rk = jnp.asarray(policy_kl_logps), jnp.asarray(ref_kl_logps)
    chex.assert_rank([pk, rk], 1)
    chex.assert_equal_shape([pk, rk])
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(pk - rk), 0.0))


def _masked_mean(x: Array, mask: Array) -> Array:
    """Mean of ``x`` over ``mask``; 0 when the mask is empty (a batch with no row of that label)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1).astype(x.dtype)


def kto_loss(
    policy_logps: Array,
    ref_logps: Array,
    labels: Array,
    policy_kl_logps: Array | None = None,
    ref_kl_logps: Array | None = None,
    *,
    beta: float | Array = 0.1,
    desirable_weight: float | Array = 1.0,
    undesirable_weight: float | Array = 1.0,
    loss_type: str = "kto",
) -> tuple[Array, dict[str, Array]]:
    """KTO loss (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 7), mean over the batch's rows.

    With ``r_i = logπ(y_i|x_i) − logπ_ref(y_i|x_i)`` and the reference point ``z₀`` of
    :func:`kto_kl` (``kto`` only; 0 for ``apo_zero_unpaired``)::

        ``kto``                desirable:   λ_D · (1 − σ(β·(r − z₀)))
                               undesirable: λ_U · (1 − σ(β·(z₀ − r)))
        ``apo_zero_unpaired``  desirable:   λ_D · (1 − σ(β·r))
                               undesirable: λ_U · σ(β·r)       (APO-zero, arXiv:2408.06266)

        loss = (1/B) · Σ_i ℓ_i     (every row counts once, whatever its label; as TRL)

    λ_D / λ_U are ``desirable_weight`` / ``undesirable_weight`` (the paper suggests
    ``λ_D·n_D / (λ_U·n_U)`` in [1, 4/3] for ``n_D`` desirable and ``n_U`` undesirable rows).

    Args:
      policy_logps, ref_logps: ``[B]`` summed completion log-probs of each row's own completion.
      labels: ``[B]`` true (or 1) for a desirable completion, false (0) for an undesirable one.
      policy_kl_logps, ref_kl_logps: ``[B]`` the same for the mismatched pairs ``(x_i, y'_i)``;
        required by ``kto``, ignored by ``apo_zero_unpaired``.
      beta: β (TRL default 0.1).
      desirable_weight, undesirable_weight: λ_D, λ_U (default 1).
      loss_type: ``"kto"`` or ``"apo_zero_unpaired"`` (static).

    Returns:
      ``(loss, metrics)``: ``kl`` (z₀), ``rewards/chosen`` and ``rewards/rejected`` (mean β·r over
      the desirable / undesirable rows; 0 when there are none), ``rewards/margins`` (their
      difference; 0 unless the batch has rows of both labels), ``logps/chosen``, ``logps/rejected`` (mean policy log-probs likewise), and
      ``desirable_fraction`` (the share of rows labelled desirable).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    pw, rw = jnp.asarray(policy_logps), jnp.asarray(ref_logps)
    chex.assert_rank([pw, rw], 1)
    chex.assert_equal_shape([pw, rw])
    chex.assert_type([pw, rw], float)
    lab = jnp.asarray(labels)
    chex.assert_equal_shape([pw, lab])
    desirable = lab.astype(bool)

    if loss_type == "kto":
        if policy_kl_logps is None or ref_kl_logps is None:
            raise ValueError("loss_type 'kto' needs policy_kl_logps and ref_kl_logps (the mismatched pairs)")
        z0 = kto_kl(policy_kl_logps, ref_kl_logps).astype(pw.dtype)
    else:
        z0 = jnp.zeros((), pw.dtype)

    r = pw - rw
    if loss_type == "kto":
        chosen = 1.0 - jax.nn.sigmoid(beta * (r - z0))
        rejected = 1.0 - jax.nn.sigmoid(beta * (z0 - r))
    else:
        chosen = 1.0 - jax.nn.sigmoid(beta * r)
        rejected = jax.nn.sigmoid(beta * r)
    per_row = jnp.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    loss = jnp.mean(per_row)

    rewards = jax.lax.stop_gradient(beta * r)
    logps = jax.lax.stop_gradient(pw)
    undesirable = ~desirable
    rc, rr = _masked_mean(rewards, desirable), _masked_mean(rewards, undesirable)
    metrics = {
        "kl": z0,
        "rewards/chosen": rc,
        "rewards/rejected": rr,
        "rewards/margins": jnp.where(jnp.any(desirable) & jnp.any(undesirable), rc - rr, 0.0),
        "logps/chosen": _masked_mean(logps, desirable),
        "logps/rejected": _masked_mean(logps, undesirable),
        "desirable_fraction": jnp.mean(desirable.astype(pw.dtype)),
    }
    return loss, metrics
