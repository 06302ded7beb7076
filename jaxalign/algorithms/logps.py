"""A causal LM's token log-probs from its final hidden states, through the full LM head or
through the completion-only chunked head (:mod:`jaxalign.losses.head`) when an algorithm's
``chunk_size`` is set: one place that every loss (SFT, DPO, IFT, KTO, RM's LM term, RAFT, online
DPO, GRPO/RLOO, PPO) and the reference forward of the online algorithms go through, so the
two paths cannot drift apart.

With ``chunk_size`` the ``[B, S, V]`` logits and their gradient are never all live: only the
positions the loss reads go through the head, ``chunk_size`` tokens at a time, and every
other position's log-prob is 0.
"""

from __future__ import annotations

import jax

from jaxalign.losses import entropy_from_logits, shifted_token_logprobs, token_logprobs
from jaxalign.losses.head import completion_logprobs_from_hidden, head_token_logprobs


def _head_args(model) -> dict:
    cfg = model.config
    return {"softcap": cfg.final_logit_softcapping, "dtype": cfg.jnp_dtype}


def completion_token_logps(model, hidden, ids, mask, chunk_size: int | None, *, temperature: float = 1.0,
                           with_entropy: bool = False):
    """Shifted log-probs ``[B, S]`` of ``ids`` (aligned with them, as
    :func:`jaxalign.losses.shifted_token_logprobs`) from ``model``'s final hidden states
    ``[B, S, D]``: the full head at every position (``chunk_size`` None), or only at the
    ``mask`` positions, the head in chunks of ``chunk_size`` tokens (0 elsewhere).

    ``with_entropy``: also the entropy of the distribution that produced each token (as
    ``entropy_from_logits(..., shifted=True)``), a metric without gradient.
    """
    if chunk_size is None:
        logits = model.logits_from_hidden(hidden)
        lp = shifted_token_logprobs(logits, ids, temperature=temperature)
        if not with_entropy:
            return lp
        return lp, entropy_from_logits(jax.lax.stop_gradient(logits), temperature=temperature, shifted=True)
    return completion_logprobs_from_hidden(hidden, model.head_weight(), ids, mask, chunk_size=chunk_size,
                                           temperature=temperature, with_entropy=with_entropy,
                                           **_head_args(model))


def slot_token_logps(model, hidden, targets, chunk_size: int | None, *, temperature: float = 1.0,
                     n_valid=None, with_entropy: bool = False):
    """Log-probs ``[B, N]`` of ``targets[:, n]`` given ``hidden[:, n]`` (already aligned: the
    hidden state that predicts each target), e.g. a completion's slots. With ``chunk_size``
    only the first ``n_valid`` slots of every row go through the head (the longest
    completion; right-padded slots after it are 0).

    ``with_entropy``: also each slot's entropy, a metric without gradient.
    """
    if chunk_size is None:
        logits = model.logits_from_hidden(hidden)
        lp = token_logprobs(logits, targets, temperature=temperature)
        if not with_entropy:
            return lp
        return lp, entropy_from_logits(jax.lax.stop_gradient(logits), temperature=temperature)
    return head_token_logprobs(hidden, model.head_weight(), targets, chunk_size=chunk_size,
                               temperature=temperature, n_valid=n_valid, with_entropy=with_entropy,
                               **_head_args(model))
