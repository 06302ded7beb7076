"""The attention core of the decoder (:mod:`jaxalign.models.llama`): probabilities from scores
and a mask, and the whole-sequence attention of training passes, in causal blocks of queries
(docs/design-notes.md, "Causal blocks in the training attention")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.models.matmul import mm
from jaxalign.models.modules import softcap


def probs(scores, mask, score_div: float, cap: float | None):
    """Attention probabilities from float32 ``[b, k, g, s, t]`` scores and a ``[b, s, t]`` mask."""
    scores = softcap(scores / score_div, cap)
    # A finite fill keeps fully-masked rows (left padding) NaN-free; their outputs are unused.
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


# Training passes attend in blocks of this many queries (``attend``); 0 turns blocking off.
CAUSAL_BLOCK = 256


def attend(q, k, v, mask, *, score_div: float, cap: float | None):
    """Attention of a whole sequence (no cache): q ``[b, s, k, g, h]``, k/v ``[b, t, k, h]`` ->
    ``[b, s, k, g, h]``; the mask must be causal (no key after its query's slot), as it is
    without a cache, when ``s`` is over one :data:`CAUSAL_BLOCK`.

    Under ``jax.checkpoint`` (``recompute_scores``) the backward pass keeps only these inputs and
    recomputes the float32 ``[b, k, g, s, t]`` scores and probabilities, which would otherwise be
    kept for every layer: at SmolLM2-135M's shape and 4 x 512 tokens 2.1 of the decoder's
    5.6 GiB of backward-pass temporaries (benchmarks/attention_memory.py). The price is one more ``q·kᵀ`` and softmax per layer in the
    backward pass (a few % of the step's FLOPs); a fused attention kernel does the same.
    """
    s = q.shape[1]
    block = CAUSAL_BLOCK
    if not block or s <= block or k.shape[1] != s:
        return _attend_dense(q, k, v, mask, score_div, cap)
    # Causal: the queries of slots [i0, i1) see no key past i1, so each block of queries takes
    # only the keys before its end. At 4 blocks that is 62 % of the dense scores (their
    # softmax, their masking, both dots, forward and backward), exactly the same values.
    outs = [_attend_dense(q[:, i0:i0 + block], k[:, :i0 + block], v[:, :i0 + block],
                          mask[:, i0:i0 + block, :i0 + block], score_div, cap)
            for i0 in range(0, s, block)]
    return jnp.concatenate(outs, axis=1)


def _attend_dense(q, k, v, mask, score_div, cap):
    """One dense block: every query against every key given."""
    scores = mm("bskgh,btkh->bkgst", q, k, q.dtype, out_dtype=jnp.float32)
    return mm("bkgst,btkh->bskgh", probs(scores, mask, score_div, cap), v, q.dtype)
