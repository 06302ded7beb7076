"""Token log-probs straight from hidden states: the LM head fused with the log-softmax.

``log p(t | h) = z_t / T − logsumexp(z / T)`` with ``z = softcap(h · Wᵀ)``, ``W`` the ``[V, D]``
output embedding. :func:`shifted_token_logprobs` needs the ``[B, S, V]`` logits as an input:
they, and in the backward pass their gradient, are all live at once (SmolLM2, V = 49152, at
batch 8 x 256: 0.4 GiB each in float32, more with XLA:CPU's copies). Here the head itself runs
in chunks of ``chunk_size`` tokens: each chunk's ``[.., chunk, V]`` logits are made, reduced to
the target's log-prob and the row ``logsumexp``, and dropped. A custom VJP recomputes each
chunk's logits in the backward pass, writes that chunk's ``∂/∂h`` in place and adds its
``∂/∂W = (∂/∂z)ᵀ h`` to a float32 accumulator, so the logits' gradient is never whole either
(the Liger-kernel / "cut cross-entropy" idea; Wijmans et al. 2024, arXiv:2411.09009).

:func:`completion_logprobs_from_hidden` adds the gather before the head: only positions whose
next token is scored (a completion token) go through it, compacted to the front of each row,
and the chunk loop stops after the last chunk that holds one of them.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxalign.losses.logprobs import _rows, _rows_vjp, shift_right

Array = jax.Array


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _raw_logits(h: Array, table: Array, dtype) -> Array:
    # The models' ``mm``: operands in the compute dtype, float32 accumulation, result in the
    # compute dtype, so a chunk's logits equal the full head's at the same positions.
    return jnp.einsum("...nd,vd->...nv", h.astype(dtype), table.astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)


def _slice(x: Array, start, size: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis % x.ndim)


def _put(x: Array, part: Array, start, axis: int) -> Array:
    return lax.dynamic_update_slice_in_dim(x, part, start, axis=axis % x.ndim)


def _forward(chunk, cap, dtype, entropy, hidden, table, targets, temperature, n_chunks):
    out = jnp.zeros(targets.shape, jnp.float32)

    def body(i, carry):
        out, lse, ent = carry
        start = i * chunk
        z = _softcap(_raw_logits(_slice(hidden, start, chunk, -2), table, dtype), cap)
        o, l = _rows("logprobs", z, _slice(targets, start, chunk, -1), temperature)
        if entropy:
            # The same chunk's logits, one more reduction: the metric costs no second head pass.
            e = _rows("entropy", z, None, temperature)[0]
            ent = _put(ent, e.astype(jnp.float32), start, -1)
        return _put(out, o.astype(jnp.float32), start, -1), _put(lse, l.astype(jnp.float32), start, -1), ent

    return lax.fori_loop(0, n_chunks, body, (out, jnp.zeros_like(out), jnp.zeros_like(out)))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _head(chunk, cap, dtype, entropy, hidden, table, targets, temperature, n_chunks):
    out, _, ent = _forward(chunk, cap, dtype, entropy, hidden, table, targets, temperature, n_chunks)
    return out, ent


def _head_fwd(chunk, cap, dtype, entropy, hidden, table, targets, temperature, n_chunks):
    out, lse, ent = _forward(chunk, cap, dtype, entropy, hidden, table, targets, temperature, n_chunks)
    return (out, ent), (hidden, table, targets, temperature, n_chunks, lse, out)


def _head_bwd(chunk, cap, dtype, entropy, res, cotangents):
    hidden, table, targets, temperature, n_chunks, lse, out = res
    g = cotangents[0]  # the entropy is a metric: no gradient flows from it

    def body(i, carry):
        dh, dw, dt = carry
        start = i * chunk
        h = _slice(hidden, start, chunk, -2)
        raw = _raw_logits(h, table, dtype)
        z, cap_vjp = jax.vjp(lambda x: _softcap(x, cap), raw)
        sl = lambda a: _slice(a, start, chunk, -1)
        dz, dt_i = _rows_vjp("logprobs", z, sl(targets), temperature, sl(lse), sl(out), sl(g))
        draw = cap_vjp(dz.astype(z.dtype))[0].astype(dtype)
        # As the models' ``mm`` backward: compute-dtype operands, float32 accumulation; ∂W
        # summed over chunks in float32 whatever the compute dtype.
        dh_i = jnp.einsum("...nv,vd->...nd", draw, table.astype(dtype), preferred_element_type=jnp.float32)
        dw_i = jnp.einsum("...nv,...nd->vd", draw, h.astype(dtype), preferred_element_type=jnp.float32)
        return _put(dh, dh_i.astype(dh.dtype), start, -2), dw + dw_i, dt + dt_i

    carry = (jnp.zeros_like(hidden), jnp.zeros(table.shape, jnp.float32), jnp.zeros_like(temperature))
    dh, dw, dt = lax.fori_loop(0, n_chunks, body, carry)
    return dh, dw.astype(table.dtype), None, dt.astype(temperature.dtype), None


_head.defvjp(_head_fwd, _head_bwd)


def head_token_logprobs(
    hidden: Array,
    table: Array,
    targets: Array,
    *,
    chunk_size: int,
    softcap: float | None = None,
    temperature: float | Array = 1.0,
    dtype=None,
    n_valid: Array | int | None = None,
    with_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """``out[..., n] = log softmax(softcap(hidden[..., n, :] · tableᵀ) / T)[targets[..., n]]``,
    computed ``chunk_size`` tokens at a time (axis -2 of ``hidden``), never all logits at once.

    The same numbers as ``token_logprobs(softcap(hidden @ table.T), targets, temperature=T)``
    (up to float32 summation order), with the head's matmul done as the models do it:
    operands in ``dtype``, float32 accumulation, logits rounded to ``dtype`` before the softcap.
    Reverse-mode differentiable in ``hidden``, ``table`` and ``temperature`` (custom VJP that
    recomputes each chunk's logits); ``jax.jvp`` is not supported.

    Args:
      hidden: ``[..., N, D]`` final hidden states.
      table: ``[V, D]`` output embedding (the LM head's weight, or the tied input embedding).
      targets: ``[..., N]`` integer token ids; ``hidden[..., n]`` predicts ``targets[..., n]``.
      chunk_size: tokens per chunk (static); bounds the live logits to ``[..., chunk, V]``.
      softcap: Gemma's final-logit soft-cap ``c`` (``z = c·tanh(z/c)``), or None.
      temperature: ``T > 0`` (Python float or scalar array).
      dtype: the head's compute dtype (default ``hidden.dtype``).
      n_valid: if given (may be traced), only positions ``< n_valid`` along axis -2 are computed
        (rounded up to whole chunks); the others are 0 with zero gradient.
      with_entropy: also return the entropy of each position's distribution (the same as
        :func:`jaxalign.losses.logprobs.entropy_from_logits`), from the same chunk's logits:
        a metric, with **no gradient** (as if under ``stop_gradient``).

    Returns:
      ``[..., N]`` float32 log-probs; with ``with_entropy``, ``(log-probs, entropies)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.shape[:-1] != targets.shape or table.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"shapes: hidden {hidden.shape}, table {table.shape}, targets {targets.shape}")
    dtype = jnp.dtype(dtype or hidden.dtype)
    n = hidden.shape[-2]
    chunk = min(chunk_size, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    if pad:
        # A ragged tail is padded (a copy of the hidden states, V/D times smaller than the
        # logits): an overlapping last chunk would count its rows' ∂W twice.
        widths = [(0, 0)] * hidden.ndim
        widths[-2] = (0, pad)
        hidden = jnp.pad(hidden, widths)
        targets = jnp.pad(targets, widths[:-1])
    if n_valid is not None:
        n_chunks = jnp.minimum((jnp.asarray(n_valid, jnp.int32) + chunk - 1) // chunk, n_chunks)
    n_chunks = jnp.asarray(n_chunks, jnp.int32)
    t = jnp.asarray(temperature, jnp.promote_types(dtype, jnp.float32))
    out, ent = _head(chunk, softcap, dtype, with_entropy, hidden, table, targets.astype(jnp.int32), t, n_chunks)
    return (out[..., :n], lax.stop_gradient(ent[..., :n])) if with_entropy else out[..., :n]


def completion_logprobs_from_hidden(
    hidden: Array,
    table: Array,
    input_ids: Array,
    mask: Array,
    *,
    chunk_size: int,
    softcap: float | None = None,
    temperature: float | Array = 1.0,
    dtype=None,
    with_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """:func:`jaxalign.losses.logprobs.shifted_token_logprobs` of a causal LM at the ``mask``
    positions only, from its final hidden states: ``[B, S]`` aligned with ``input_ids``, the
    log-prob of each masked token, 0 elsewhere (position 0 is never scored).

    Gather before the head, with static shapes: in each row the positions ``t`` whose next
    token ``t + 1`` is masked are moved to the front (a stable argsort, so ``[B, S]`` stays the
    shape), and :func:`head_token_logprobs` runs only over the chunks up to the longest row's
    count; the results are gathered back to their tokens. Rows stay rows, so a batch sharded
    over devices stays sharded.

    Args:
      hidden: ``[B, S, D]`` final-norm hidden states of the model run on ``input_ids``.
      table: ``[V, D]`` output embedding.
      input_ids: ``[B, S]`` token ids.
      mask: ``[B, S]`` tokens to score (aligned with ``input_ids``).
      chunk_size, softcap, temperature, dtype, with_entropy: as :func:`head_token_logprobs`
        (the entropies aligned as ``entropy_from_logits(..., shifted=True)``, 0 off the mask).
    """
    if hidden.ndim != 3 or input_ids.shape != hidden.shape[:2] or mask.shape != input_ids.shape:
        raise ValueError(f"shapes: hidden {hidden.shape}, input_ids {input_ids.shape}, mask {mask.shape}")
    next_ids = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    scored = jnp.concatenate([mask[:, 1:].astype(bool), jnp.zeros_like(mask[:, :1], bool)], axis=1)
    order = jnp.argsort(~scored, axis=-1, stable=True)  # scored positions first, in order
    h = jnp.take_along_axis(hidden, order[..., None], axis=1)
    tg = jnp.take_along_axis(next_ids, order, axis=1)
    n_valid = jnp.max(jnp.sum(scored, axis=-1))
    out = head_token_logprobs(h, table, tg, chunk_size=chunk_size, softcap=softcap, temperature=temperature,
                              dtype=dtype, n_valid=n_valid, with_entropy=with_entropy)
    rank = jnp.maximum(jnp.cumsum(scored, axis=-1) - 1, 0)  # where each scored position went

    def back(x):
        return shift_right(jnp.where(scored, jnp.take_along_axis(x, rank, axis=1), 0.0))

    return (back(out[0]), back(out[1])) if with_entropy else back(out)
