"""Supervised fine-tuning: masked cross-entropy and NEFTune noise."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxalign.losses.logprobs import masked_count, masked_mean, masked_sum, shifted_token_logprobs

Array = jax.Array

_AGGREGATIONS = ("token_mean", "sequence_mean")


def _aggregate_nll(nll: Array, mask: Array, aggregation: str, normalizer) -> Array:
    if aggregation == "token_mean":
        denom = masked_count(mask) if normalizer is None else jnp.asarray(normalizer, jnp.float32)
        return masked_sum(nll, mask) / jnp.maximum(denom, 1.0)
    if aggregation == "sequence_mean":
        if normalizer is not None:
            raise ValueError("normalizer is only used with aggregation='token_mean'")
        per_seq = masked_mean(nll, mask, axis=-1)
        has_tokens = masked_count(mask, axis=-1) > 0
        # Sequences without loss tokens are left out of the batch mean rather than counted as 0.
        return jnp.sum(jnp.where(has_tokens, per_seq, 0.0)) / jnp.maximum(jnp.sum(has_tokens), 1)
    raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")


def nll_loss(
    token_logps: Array,
    loss_mask: Array,
    *,
    aggregation: str = "token_mean",
    normalizer: float | Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Masked negative log-likelihood of per-token log-probs.

    ``token_mean`` (default, ALGORITHMS.md §1): ``L = −Σ_{b,t} m_{bt} logp_{bt} / Σ_{b,t} m_{bt}``,
    the token mean over the whole batch, so gradient accumulation over micro-batches
    weighted by ``metrics["num_tokens"]`` equals one large batch. ``normalizer`` replaces
    the local token count (e.g. by the global batch's count, known before the micro-batches).

    ``sequence_mean``: ``L = mean_b [−Σ_t m_{bt} logp_{bt} / Σ_t m_{bt}]`` (the convention of
    the DPO and IFT reference code; sequences with no loss token are skipped).

    Args:
      token_logps: ``[B, S]`` per-token log-probs of the gold tokens.
      loss_mask: ``[B, S]`` 1 on tokens that carry the loss (completion tokens).
      aggregation: ``"token_mean"`` or ``"sequence_mean"`` (static).
      normalizer: optional token count for ``token_mean``.

    Returns:
      ``(loss, metrics)`` with metrics ``nll`` (token-mean NLL), ``num_tokens``, ``perplexity``.
    """
    chex.assert_rank([token_logps, loss_mask], 2)
    chex.assert_equal_shape([token_logps, loss_mask])
    chex.assert_type(token_logps, float)
    nll = -token_logps
    loss = _aggregate_nll(nll, loss_mask, aggregation, normalizer)
    token_nll = masked_mean(nll, loss_mask)
    metrics = {
        "nll": token_nll,
        "num_tokens": masked_count(loss_mask),
        "perplexity": jnp.exp(token_nll),
    }
    return loss, metrics


def sft_loss(
    logits: Array,
    input_ids: Array,
    loss_mask: Array,
    *,
    aggregation: str = "token_mean",
    normalizer: float | Array | None = None,
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SFT cross-entropy from logits: ``−Σ m_t log p(y_t | y_<t) / Σ m_t``.

    The prediction of ``input_ids[:, t]`` is read from ``logits[:, t−1]``; ``loss_mask`` is
    aligned with ``input_ids`` and marks the tokens that carry the loss (completion tokens,
    never the prompt; position 0 never counts). See :func:`nll_loss` for ``aggregation`` and
    ``normalizer``, and :func:`jaxalign.losses.logprobs.token_logprobs` for ``chunk_size``.

    Args:
      logits: ``[B, S, V]`` logits of the model run on ``input_ids``.
      input_ids: ``[B, S]`` token ids.
      loss_mask: ``[B, S]`` completion mask aligned with ``input_ids``.

    Returns:
      ``(loss, metrics)`` as :func:`nll_loss`.
    """
    chex.assert_equal_shape([input_ids, loss_mask])
    logps = shifted_token_logprobs(logits, input_ids, chunk_size=chunk_size)
    # Position 0 has no prediction; exclude it even if a caller marked it.
    mask = jnp.asarray(loss_mask, bool).at[:, 0].set(False)
    return nll_loss(logps, mask, aggregation=aggregation, normalizer=normalizer)


def neftune_noise(
    key: chex.PRNGKey,
    embeddings: Array,
    alpha: float | Array = 5.0,
    *,
    seq_len: int | None = None,
) -> Array:
    """NEFTune: noisy input embeddings for instruction fine-tuning (Jain et al. 2023,
    arXiv:2310.05914).

    ``e + U(−a, a)`` elementwise with ``a = α / sqrt(L · d)``, ``L`` the padded sequence
    length and ``d`` the hidden size (α ∈ {5, 10, 15} in the paper). Apply during training
    only; the key must be split from the run seed.

    Args:
      key: explicit PRNG key.
      embeddings: ``[..., L, d]`` input embeddings.
      alpha: noise scale α.
      seq_len: overrides ``L`` (defaults to ``embeddings.shape[-2]``).

    Returns:
      Embeddings plus noise, same shape and dtype.
    """
    chex.assert_rank(embeddings, {2, 3})
    chex.assert_type(embeddings, float)
    L = embeddings.shape[-2] if seq_len is None else seq_len
    d = embeddings.shape[-1]
    mag = jnp.asarray(alpha, jnp.float32) / jnp.sqrt(jnp.float32(L * d))
    noise = jax.random.uniform(key, embeddings.shape, jnp.float32, minval=-1.0, maxval=1.0) * mag
    return (embeddings.astype(jnp.float32) + noise).astype(embeddings.dtype)
