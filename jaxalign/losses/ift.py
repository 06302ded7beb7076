"""IFT: intuitive fine-tuning (Hua et al. 2024, arXiv:2405.11870; ALGORITHMS.md §8).

Two forward passes: pass 1 (no gradient) on the gold sequence gives the model's own
predictions ``ŷ``; pass 2 (with gradient) runs on the temporal residual mix of gold and
predicted embeddings; the loss weights each token by its discounted future loss.
Arrays are aligned with ``input_ids`` (``[B, S]``, log-prob of token t from logits t−1).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jaxalign.losses.logprobs import masked_count, masked_sum, shift_right

Array = jax.Array


def ift_predicted_ids(pass1_logits: Array, input_ids: Array, completion_mask: Array) -> Array:
    """Tokens fed to pass 2: ``ŷ_i = argmax logits[i−1]`` at completion positions, the gold
    ``y_i`` elsewhere (prompt, padding, and position 0, which keeps its own token).

    Args:
      pass1_logits: ``[B, S, V]`` logits of pass 1 on the gold ``input_ids``.
      input_ids: ``[B, S]`` gold token ids.
      completion_mask: ``[B, S]`` completion tokens, aligned with ``input_ids``.

    Returns:
      ``[B, S]`` token ids, dtype of ``input_ids``.
    """
    chex.assert_rank([pass1_logits, input_ids, completion_mask], [3, 2, 2])
    chex.assert_equal_shape([input_ids, completion_mask])
    chex.assert_equal_shape_prefix([pass1_logits, input_ids], 2)
    pred = jnp.argmax(pass1_logits, axis=-1).astype(input_ids.dtype)
    pred = shift_right(pred)
    replace = jnp.asarray(completion_mask, bool).at[:, 0].set(False)
    return jnp.where(replace, pred, input_ids)


def temporal_residual_embeddings(
    embedding_table: Array, input_ids: Array, predicted_ids: Array, lam: float | Array = 0.2
) -> Array:
    """Temporal residual connection: ``e_i = (1 − λ)·E[y_i] + λ·E[ŷ_i]``.

    ``E`` is a stop-gradient copy of the embedding table (as the reference code's frozen
    ``embed_tokens``), so the mix itself carries no gradient into the table.

    Args:
      embedding_table: ``[V, d]`` input embedding matrix.
      input_ids: ``[B, S]`` gold ids ``y``.
      predicted_ids: ``[B, S]`` ids ``ŷ`` from :func:`ift_predicted_ids`.
      lam: λ (default 0.2; may be a traced scalar for a schedule).

    Returns:
      ``[B, S, d]`` input embeddings for pass 2, dtype of the table.
    """
    chex.assert_rank([embedding_table, input_ids, predicted_ids], [2, 2, 2])
    chex.assert_equal_shape([input_ids, predicted_ids])
    table = lax.stop_gradient(embedding_table)
    gold = jnp.take(table, input_ids, axis=0)
    pred = jnp.take(table, predicted_ids, axis=0)
    lam = jnp.asarray(lam, table.dtype)
    return (1 - lam) * gold + lam * pred


def _discounted_reverse_cumsum(x: Array, gamma) -> Array:
    """``out_t = Σ_{k ≥ t} γ^{k−t} x_k`` along the last axis."""

    def step(carry, x_t):
        out = x_t + gamma * carry
        return out, out

    _, out = lax.scan(step, jnp.zeros(x.shape[:-1], x.dtype), jnp.moveaxis(x, -1, 0), reverse=True)
    return jnp.moveaxis(out, 0, -1)


def ift_weights(token_losses: Array, mask: Array, gamma: float | Array = 0.95) -> Array:
    """Dynamic relation propagation weights.

    Over the ``L`` loss tokens of each sequence: ``c_t = Σ_{k≥t} γ^{k−t} ℓ_k / L`` and
    ``w_t = L · c_t / Σ_s c_s`` (so the weights of a sequence sum to L). Gradients flow
    through the weights. ``γ = 0`` gives uniform weights ``w_t = 1``, as in the reference
    implementation (``get_cumsum_weight``), which makes IFT with λ = 0, γ = 0 exactly SFT;
    note that the formula's limit γ → 0 would instead give ``w_t = L·ℓ_t / Σ_s ℓ_s``.
    Masked positions get weight 0; a sequence whose ``Σ c`` is 0 gets uniform weights.

    Args:
      token_losses: ``[B, S]`` per-token losses ``ℓ_t = −log p(y_t | e_<t)``.
      mask: ``[B, S]`` loss tokens (completion).
      gamma: γ (default 0.95).

    Returns:
      ``[B, S]`` weights.
    """
    chex.assert_rank([token_losses, mask], 2)
    chex.assert_equal_shape([token_losses, mask])
    valid = mask.astype(bool)
    n = masked_count(mask, axis=-1)[:, None]
    item = jnp.where(valid, token_losses, 0.0) / jnp.maximum(n, 1.0)
    c = jnp.where(valid, _discounted_reverse_cumsum(item, gamma), 0.0)
    total = jnp.sum(c, axis=-1, keepdims=True)
    ok = total > 0
    w = jnp.where(ok, n * c / jnp.where(ok, total, 1.0), 1.0)
    w = jnp.where(jnp.asarray(gamma) == 0, 1.0, w)
    return jnp.where(valid, w, 0.0)


def ift_loss(
    token_logps: Array, loss_mask: Array, *, gamma: float | Array = 0.95
) -> tuple[Array, dict[str, Array]]:
    """IFT loss ``mean_b [ Σ_t w_t ℓ_t / L_b ]`` with ``ℓ_t = −logp_t`` of pass 2 against
    the gold tokens and ``w`` from :func:`ift_weights` (gradients flow through ``w``).
    Sequences without loss tokens are left out of the batch mean. With λ = 0 (pass 2 on
    the gold embeddings) and γ = 0 this is SFT with per-sequence means
    (``nll_loss(..., aggregation="sequence_mean")``).

    Args:
      token_logps: ``[B, S]`` pass-2 per-token log-probs, aligned with ``input_ids``.
      loss_mask: ``[B, S]`` completion mask aligned with ``input_ids``.
      gamma: γ.

    Returns:
      ``(loss, metrics)``: ``nll`` (unweighted token-mean NLL), ``num_sequences``.
    """
    chex.assert_rank([token_logps, loss_mask], 2)
    chex.assert_equal_shape([token_logps, loss_mask])
    chex.assert_type(token_logps, float)
    losses = -token_logps
    w = ift_weights(losses, loss_mask, gamma)
    n = masked_count(loss_mask, axis=-1)
    per_seq = masked_sum(w * losses, loss_mask, axis=-1) / jnp.maximum(n, 1.0)
    has = n > 0
    num_seq = jnp.sum(has).astype(jnp.float32)
    loss = jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(num_seq, 1.0)
    metrics = {
        "nll": masked_sum(losses, loss_mask) / jnp.maximum(masked_count(loss_mask), 1.0),
        "num_sequences": num_seq,
    }
    return loss, metrics
