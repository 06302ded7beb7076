"""Reward-model losses: pairwise Bradley–Terry, K-wise all pairs, Plackett–Luce (ListMLE).

Rewards are the scalar head's outputs at the last real token of each response (the model
layer reads that position from the mask). Ranked inputs are ordered **best first**:
``rewards[b, 0] ≻ rewards[b, 1] ≻ …``; a validity ``mask`` removes padded responses when
prompts have different numbers of responses (ragged K).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def preference_accuracy(chosen_rewards: Array, rejected_rewards: Array) -> Array:
    """Fraction of pairs with ``r_w > r_l`` (ties count as wrong)."""
    chex.assert_equal_shape([chosen_rewards, rejected_rewards])
    return jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32))


def pairwise_loss(
    chosen_rewards: Array,
    rejected_rewards: Array,
    *,
    margin: Array | float | None = None,
    center_coef: float = 0.0,
    valid: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Bradley–Terry pairwise reward loss (InstructGPT, arXiv:2203.02155; Llama 2 margin,
    arXiv:2307.09288; centring term of Eisenstein et al., arXiv:2312.09244).

    ``L = mean_b[−log σ(r_w − r_l − m)] + c · mean_b[(r_w + r_l)²]``

    Args:
      chosen_rewards: ``[B]`` rewards of the preferred responses.
      rejected_rewards: ``[B]`` rewards of the other responses.
      margin: optional ``[B]`` (or scalar) margin ``m``.
      center_coef: ``c`` (≈ 0.01), pulls rewards towards zero mean; 0 disables.
      valid: optional ``[B]`` mask of the pairs that exist (empty slots of packed batches):
        every mean is over the valid pairs only.

    Returns:
      ``(loss, metrics)``: ``accuracy``, ``margin`` (mean ``r_w − r_l``), ``chosen``, ``rejected``.
    """
    chex.assert_rank([chosen_rewards, rejected_rewards], 1)
    chex.assert_equal_shape([chosen_rewards, rejected_rewards])
    chex.assert_type([chosen_rewards, rejected_rewards], float)
    if valid is None:
        mean = jnp.mean
    else:
        chex.assert_equal_shape([chosen_rewards, valid])
        v = jnp.asarray(valid).astype(bool)

        def mean(x):
            return jnp.sum(jnp.where(v, x, 0.0)) / jnp.maximum(jnp.sum(v), 1).astype(x.dtype)
    diff = chosen_rewards - rejected_rewards
    logits = diff if margin is None else diff - margin
    loss = -mean(jax.nn.log_sigmoid(logits))
    if center_coef:
        loss = loss + center_coef * mean(jnp.square(chosen_rewards + rejected_rewards))
    metrics = {
        "accuracy": (preference_accuracy(chosen_rewards, rejected_rewards) if valid is None
                     else mean((chosen_rewards > rejected_rewards).astype(jnp.float32))),
        "margin": mean(diff),
        "chosen": mean(chosen_rewards),
        "rejected": mean(rejected_rewards),
    }
    return loss, metrics


def _valid_pairs(mask: Array) -> Array:
    """``[B, K, K]``: True where ``i < j`` and both responses are valid."""
    k = mask.shape[-1]
    upper = jnp.triu(jnp.ones((k, k), bool), 1)
    return upper & mask[:, :, None] & mask[:, None, :]


def _prompt_mean(per_prompt: Array, has_terms: Array) -> Array:
    return jnp.sum(jnp.where(has_terms, per_prompt, 0.0)) / jnp.maximum(jnp.sum(has_terms), 1)


def ranking_accuracy(rewards: Array, mask: Array | None = None) -> dict[str, Array]:
    """Accuracy metrics of best-first ranked rewards ``[B, K]``.

    ``pair_accuracy``: fraction of valid pairs ``i < j`` with ``r_i > r_j`` (over all pairs of
    the batch); ``top1_accuracy``: fraction of prompts whose best response has the highest
    reward among its valid responses (strictly).
    """
    chex.assert_rank(rewards, 2)
    mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
    chex.assert_equal_shape([rewards, mask])
    pairs = _valid_pairs(mask)
    correct = rewards[:, :, None] > rewards[:, None, :]
    n_pairs = jnp.sum(pairs)
    pair_acc = jnp.sum(pairs & correct) / jnp.maximum(n_pairs, 1)
    others = jnp.where(mask.at[:, 0].set(False), rewards, -jnp.inf)
    top1 = mask[:, 0] & (rewards[:, 0] > jnp.max(others, axis=-1))
    has_pair = jnp.sum(pairs, axis=(1, 2)) > 0
    top1_acc = jnp.sum(top1 & has_pair) / jnp.maximum(jnp.sum(has_pair), 1)
    return {"pair_accuracy": pair_acc, "top1_accuracy": top1_acc}


def kwise_pairwise_loss(
    rewards: Array, mask: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """K-wise reward loss over all pairs of a ranking (InstructGPT, arXiv:2203.02155, eq. 1).

    ``L = mean_b [ −1/C(K_b, 2) · Σ_{i<j valid} log σ(r_{b,i} − r_{b,j}) ]`` with responses
    sorted best first; all pairs of one prompt form one batch element. Prompts with fewer
    than two valid responses are left out of the mean. With K = 2 this is
    :func:`pairwise_loss`.

    Args:
      rewards: ``[B, K]`` rewards, best first.
      mask: optional ``[B, K]`` validity mask (ragged K).

    Returns:
      ``(loss, metrics)`` with ``pair_accuracy`` and ``top1_accuracy``.
    """
    chex.assert_rank(rewards, 2)
    chex.assert_type(rewards, float)
    mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
    chex.assert_equal_shape([rewards, mask])
    rewards = jnp.where(mask, rewards, 0.0)
    pairs = _valid_pairs(mask)
    diff = rewards[:, :, None] - rewards[:, None, :]
    terms = jnp.where(pairs, -jax.nn.log_sigmoid(jnp.where(pairs, diff, 0.0)), 0.0)
    n_pairs = jnp.sum(pairs, axis=(1, 2))
    per_prompt = jnp.sum(terms, axis=(1, 2)) / jnp.maximum(n_pairs, 1)
    loss = _prompt_mean(per_prompt, n_pairs > 0)
    return loss, ranking_accuracy(rewards, mask)


def plackett_luce_loss(
    rewards: Array, mask: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Listwise Plackett–Luce negative log-likelihood of a full ranking (ListMLE,
    Xia et al. 2008; for reward models see Zhu et al. 2023, arXiv:2301.11270).

    ``L = mean_b [ −Σ_{k=1}^{K−1} ( r_{b,k} − log Σ_{j ≥ k} exp r_{b,j} ) ]`` for responses
    ranked best first (a reverse log-cum-sum-exp). Invalid responses are removed from the
    list (their terms and their share of every suffix normaliser); the k = K term is
    identically 0. With K = 2 this equals :func:`pairwise_loss`.

    Args:
      rewards: ``[B, K]`` rewards, best first.
      mask: optional ``[B, K]`` validity mask (ragged K).

    Returns:
      ``(loss, metrics)`` with ``pair_accuracy`` and ``top1_accuracy``.
    """
    chex.assert_rank(rewards, 2)
    chex.assert_type(rewards, float)
    mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
    chex.assert_equal_shape([rewards, mask])
    # Padding values never reach a logsumexp, so NaN/Inf padding cannot poison gradients.
    rewards = jnp.where(mask, rewards, 0.0)
    k = rewards.shape[-1]
    suffix = jnp.triu(jnp.ones((k, k), bool))  # suffix[k, j] = j >= k
    in_suffix = suffix[None] & mask[:, None, :]
    # Rows of invalid k would be empty (lse = -inf, NaN gradients); give them their own
    # reward, then drop their term.
    in_suffix = in_suffix | (jnp.eye(k, dtype=bool)[None] & ~mask[:, :, None])
    scores = jnp.broadcast_to(rewards[:, None, :], (rewards.shape[0], k, k))
    lse = jax.nn.logsumexp(jnp.where(in_suffix, scores, -jnp.inf), axis=-1)
    terms = jnp.where(mask, lse - rewards, 0.0)
    has_pair = jnp.sum(mask, axis=-1) > 1
    loss = _prompt_mean(jnp.sum(terms, axis=-1), has_pair)
    return loss, ranking_accuracy(rewards, mask)
