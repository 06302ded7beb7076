"""Token log-probabilities, masked statistics and entropy.

Conventions (DESIGN.md, "Conventions that prevent the classic RLHF bugs"):

* The log-prob of token ``t`` comes from the logits at ``t - 1``.
  :func:`shifted_token_logprobs` returns an array **aligned with** ``input_ids``
  (shape ``[B, S]``, position 0 is 0 because nothing predicts the first token), so that
  the same completion mask that marks tokens in ``input_ids`` selects their log-probs,
  with no second, shifted mask to get wrong.
* Masks are validity masks: any non-zero entry counts as a real token. Masked positions
  are removed with ``jnp.where`` rather than multiplied by 0, so a NaN or Inf at a padded
  position cannot leak into a sum or its gradient.
* Log-probs are computed and returned in float32 (float64 if the logits are float64),
  whatever the logits' dtype.

Memory: ``log p = (x_t − m) − log Σ_v exp(x_v − m)`` (``m`` the row max) needs one gather
and two reductions over the vocabulary. Under ``jit`` XLA fuses them with the temperature
division (and, on a GPU, the dtype conversion), so no ``[B, S, V]`` float32 copy of the logits is
written (``log_softmax`` followed by a gather writes one). ``chunk_size`` walks the sequence
with ``lax.map`` and has a custom VJP that recomputes each chunk in the backward pass and
writes its gradient in place, bounding intermediates by ``[B, chunk, V]`` in both
directions. It pays off where the plain path is not fused: un-jitted calls, the entropy's
backward pass, and XLA:CPU, whose YNNPACK reductions allocate scratch proportional to their
input outside XLA's buffer accounting. On a GPU under ``jit`` the plain path is already
minimal and the faster one. XLA:CPU widens bfloat16 arrays to float32 by itself, so bf16
logits on a CPU cost one float32 copy on either path. Numbers: ``benchmarks/README.md``.
"""

from __future__ import annotations

from functools import partial

import chex
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _scaled(logits: Array, temperature) -> Array:
    x = logits.astype(_compute_dtype(logits.dtype))
    return x / jnp.asarray(temperature, x.dtype)


def _rows(kind: str, logits: Array, targets, temperature) -> tuple[Array, Array]:
    """Per-row log-prob of the target (``kind="logprobs"``) or entropy (``"entropy"``) of
    ``x = logits / T``, and the row ``logsumexp(x)``."""
    dtype = _compute_dtype(logits.dtype)
    t = jnp.asarray(temperature, dtype)
    # Every [.., V] expression below has a single consumer chain ending in a reduction, and
    # the gather reads the raw logits: XLA then recomputes the scaled values inside each
    # reduction instead of storing a scaled (or widened) copy of the logits.
    m = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True).astype(dtype))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    z = (logits.astype(dtype) - m) / t
    lse_z = jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
    if kind == "logprobs":
        # (x_t - m) - log Σ exp(x - m) rather than x_t - logsumexp(x): subtracting the max
        # first is exact for nearby values; x_t - lse loses the last bits when |x| is large.
        picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
        out = ((picked.astype(dtype) - m) / t - lse_z)[..., 0]
    else:
        # H = lse - Σ_v p_v z_v (shift-invariant); the softmax p is never stored. Masked
        # (-inf) logits contribute 0, not 0 · (-inf), in the value and in the gradient.
        finite = jnp.isfinite(z)
        z_safe = jnp.where(finite, z, 0.0)
        pz = jnp.where(finite, jnp.exp(z_safe - lse_z) * z_safe, 0.0)
        out = lse_z[..., 0] - jnp.sum(pz, axis=-1)
    return out, (lse_z + m / t)[..., 0]


def _rows_vjp(kind: str, logits: Array, targets, temperature, lse: Array, out: Array, g: Array):
    """Cotangents of :func:`_rows`' output w.r.t. the logits and T, from the saved row
    ``lse`` in one elementwise pass. With ``x = logits / T`` and ``p = exp(x − lse)``:
    ``∂ log p_t/∂x = onehot_t − p``; ``∂H/∂x = −p ⊙ (x − lse + H)``;
    ``∂/∂logits = (∂/∂x) / T`` and ``∂/∂T = −Σ (∂/∂x) ⊙ x / T``."""
    x = _scaled(logits, temperature)
    p = jnp.exp(x - lse[..., None])
    if kind == "logprobs":
        onehot = jnp.arange(x.shape[-1]) == targets[..., None]
        dx = onehot.astype(x.dtype) - p
    else:
        dx = jnp.where(p > 0, -p * (x - lse[..., None] + out[..., None]), 0.0)
    dx = dx * g[..., None].astype(x.dtype)
    t = jnp.asarray(temperature, x.dtype)
    d_temp = -jnp.sum(jnp.where(jnp.isfinite(x), dx * x, 0.0)) / t
    return (dx / t).astype(logits.dtype), d_temp


def _chunk(x: Array, start, size: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis % x.ndim)


def _chunked_forward(kind: str, chunk: int, logits: Array, targets, temperature):
    seq = logits.shape[-2]
    n_full, rem = divmod(seq, chunk)

    def body(i):
        start = i * chunk
        tg = None if targets is None else _chunk(targets, start, chunk, -1)
        return _rows(kind, _chunk(logits, start, chunk, -2), tg, temperature)

    outs, lses = [], []
    if n_full:
        out, lse = lax.map(body, jnp.arange(n_full))  # [n, ..., chunk] each
        for acc, a in ((outs, out), (lses, lse)):
            a = jnp.moveaxis(a, 0, -2)
            acc.append(a.reshape(*a.shape[:-2], n_full * chunk))
    if rem:
        # A ragged tail gets one static slice instead of padding the logits (a full copy).
        tg = None if targets is None else targets[..., n_full * chunk:]
        out, lse = _rows(kind, logits[..., n_full * chunk:, :], tg, temperature)
        outs.append(out)
        lses.append(lse)
    cat = lambda parts: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    return cat(outs), cat(lses)


# Plain autodiff of lax.map over slices of a closed-over array accumulates the gradient in a
# zero-initialised carry and copies it out: about twice the logits' size on top of the
# gradient itself (measured: 1.9 GiB of XLA temporaries for 8x1024x49152). The custom VJP
# keeps only the row logsumexp from the forward pass and writes each chunk's gradient in
# place, in one elementwise pass per chunk.
@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked(kind: str, chunk: int, logits: Array, targets, temperature: Array) -> Array:
    return _chunked_forward(kind, chunk, logits, targets, temperature)[0]


def _chunked_fwd(kind, chunk, logits, targets, temperature):
    out, lse = _chunked_forward(kind, chunk, logits, targets, temperature)
    return out, (logits, targets, temperature, lse, out)


def _chunked_bwd(kind, chunk, residuals, g):
    logits, targets, temperature, lse, out = residuals
    seq = logits.shape[-2]
    n_full, rem = divmod(seq, chunk)

    def grads(sl):
        tg = None if targets is None else sl(targets, -1)
        return _rows_vjp(kind, sl(logits, -2), tg, temperature, sl(lse, -1), sl(out, -1), sl(g, -1))

    def body(i, carry):
        d_logits, d_temp = carry
        start = i * chunk
        dl, dt = grads(lambda a, ax: _chunk(a, start, chunk, ax))
        d_logits = lax.dynamic_update_slice_in_dim(d_logits, dl, start, axis=logits.ndim - 2)
        return d_logits, d_temp + dt

    carry = (jnp.zeros_like(logits), jnp.zeros_like(temperature))
    d_logits, d_temp = lax.fori_loop(0, n_full, body, carry)
    if rem:
        start = n_full * chunk

        def tail(a, ax):
            return lax.slice_in_dim(a, start, a.shape[ax], axis=ax % a.ndim)

        dl, dt = grads(tail)
        d_logits = lax.dynamic_update_slice_in_dim(d_logits, dl, start, axis=logits.ndim - 2)
        d_temp = d_temp + dt
    return d_logits, None, d_temp.astype(temperature.dtype)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# Both paths run as compiled computations even when the caller does not jit: an eager
# call would otherwise materialise every [B, S, V] intermediate (measured: +3 GiB for
# 8x1024x49152 float32) instead of the fused, copy-free program.
def _plain_impl(kind: str, logits: Array, targets, temperature) -> Array:
    return _rows(kind, logits, targets, temperature)[0]


# A Python-number temperature is compiled in as a constant: a runtime divisor makes
# XLA:CPU's reduction kernels allocate more scratch (measured: 4/3 instead of 2/3 of the
# logits' size), and T = 1 folds away entirely.
_plain_const_t = jax.jit(_plain_impl, static_argnums=(0, 3))
_plain_traced_t = jax.jit(_plain_impl, static_argnums=0)


def _chunked_impl(kind: str, chunk: int, logits: Array, targets, temperature) -> Array:
    t = jnp.asarray(temperature, _compute_dtype(logits.dtype))
    return _chunked(kind, chunk, logits, targets, t)


_chunked_const_t = jax.jit(_chunked_impl, static_argnums=(0, 1, 4))
_chunked_traced_t = jax.jit(_chunked_impl, static_argnums=(0, 1))


def _vocab_map(kind: str, logits: Array, targets, temperature, chunk_size: int | None) -> Array:
    """:func:`_rows` over all positions at once, or over sequence chunks (axis -2) with
    ``lax.map``; the chunked path is reverse-mode only (custom VJP)."""
    if chunk_size is None or chunk_size >= logits.shape[-2]:
        if isinstance(temperature, (int, float)):
            return _plain_const_t(kind, logits, targets, float(temperature))
        return _plain_traced_t(kind, logits, targets, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(temperature, (int, float)):
        return _chunked_const_t(kind, chunk_size, logits, targets, float(temperature))
    return _chunked_traced_t(kind, chunk_size, logits, targets, temperature)


def token_logprobs(
    logits: Array,
    targets: Array,
    *,
    temperature: float | Array = 1.0,
    chunk_size: int | None = None,
) -> Array:
    """Log-probabilities of already-aligned targets.

    ``out[..., s] = log softmax(logits[..., s, :] / T)[targets[..., s]]
                 = logits[..., s, t] / T - logsumexp(logits[..., s, :] / T)``.

    PPO log-probs are taken at the sampling temperature ``T`` (Ziegler et al. 2019,
    arXiv:1909.08593; MOSS-RLHF arXiv:2307.04964).

    Args:
      logits: ``[..., S, V]`` float logits (any float dtype).
      targets: ``[..., S]`` integer token ids, ``logits[..., s, :]`` predicts ``targets[..., s]``.
      temperature: sampling temperature ``T > 0`` (Python float or scalar array).
      chunk_size: if set, compute over sequence chunks of this size with ``lax.map``;
        the numbers are the same as the plain path (up to float32 summation order).
        Reverse-mode differentiable (custom VJP); ``jax.jvp`` is not supported on it.

    Returns:
      ``[..., S]`` log-probs in float32 (float64 for float64 logits).
    """
    chex.assert_rank(logits, targets.ndim + 1)
    chex.assert_type(targets, int)
    chex.assert_equal_shape_prefix([logits, targets], targets.ndim)
    return _vocab_map("logprobs", logits, targets, temperature, chunk_size)


def shift_right(x: Array, fill=0) -> Array:
    """``out[..., 0] = fill``, ``out[..., t] = x[..., t - 1]`` (moves predictions onto tokens)."""
    pad = jnp.full(x.shape[:-1] + (1,), fill, x.dtype)
    return jnp.concatenate([pad, x[..., :-1]], axis=-1)


def shifted_token_logprobs(
    logits: Array,
    input_ids: Array,
    *,
    temperature: float | Array = 1.0,
    chunk_size: int | None = None,
) -> Array:
    """Per-token log-probs of a sequence under a causal LM, aligned with ``input_ids``.

    ``out[b, t] = log softmax(logits[b, t-1] / T)[input_ids[b, t]]`` for ``t >= 1`` and
    ``out[b, 0] = 0`` (the first token has no prediction). Because ``out`` is aligned with
    ``input_ids``, a completion mask over ``input_ids`` applies to it unchanged; position 0
    is never a completion token. The logits at the last position predict nothing and are
    unused. Equivalent to TRL's ``get_batch_logps`` (``labels[:, 1:]`` vs ``logits[:, :-1]``)
    with a zero column prepended.

    Args:
      logits: ``[B, S, V]`` logits of the model run on ``input_ids``.
      input_ids: ``[B, S]`` integer token ids.
      temperature: sampling temperature; PPO's old/new/ref log-probs use the same ``T``.
      chunk_size: optional sequence chunk size (same numbers, bounded intermediates).

    Returns:
      ``[B, S]`` float32 log-probs, 0 at position 0.
    """
    chex.assert_rank([logits, input_ids], [3, 2])
    chex.assert_type(input_ids, int)
    chex.assert_equal_shape_prefix([logits, input_ids], 2)
    # Targets shifted left instead of slicing logits[:, :-1], which would copy the logits
    # when not jitted; the last position's prediction (of a dummy target 0) is dropped.
    next_ids = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    lp = token_logprobs(logits, next_ids, temperature=temperature, chunk_size=chunk_size)
    return shift_right(lp)


def entropy_from_logits(
    logits: Array,
    *,
    temperature: float | Array = 1.0,
    chunk_size: int | None = None,
    shifted: bool = False,
) -> Array:
    """Entropy of the next-token distribution, ``H = logsumexp(x) - Σ_v softmax(x)_v x_v``
    with ``x = logits / T``.

    Args:
      logits: ``[..., S, V]`` logits.
      temperature: sampling temperature.
      chunk_size: optional sequence chunk size (same numbers).
      shifted: if True, align with the tokens like :func:`shifted_token_logprobs`
        (``out[..., t]`` is the entropy of the distribution that produced token ``t``;
        ``out[..., 0] = 0``).

    Returns:
      ``[..., S]`` float32 entropies in nats.
    """
    chex.assert_rank(logits, {2, 3, 4})
    ent = _vocab_map("entropy", logits, None, temperature, chunk_size)
    return shift_right(ent) if shifted else ent


def _valid(mask: Array) -> Array:
    return mask.astype(bool)


def masked_sum(x: Array, mask: Array, axis=None) -> Array:
    """``Σ_{mask} x`` over ``axis`` (all axes if None). Masked entries are dropped with
    ``where``, so non-finite padding cannot leak."""
    chex.assert_equal_shape([x, mask])
    return jnp.sum(jnp.where(_valid(mask), x, 0), axis=axis)


def masked_count(mask: Array, axis=None) -> Array:
    """Number of valid entries (float32)."""
    return jnp.sum(_valid(mask), axis=axis).astype(jnp.float32)


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
    """``Σ_{mask} x / max(Σ mask, 1)``; an empty mask gives 0, not NaN."""
    return masked_sum(x, mask, axis) / jnp.maximum(masked_count(mask, axis), 1.0)


def masked_var(x: Array, mask: Array, *, unbiased: bool = True) -> Array:
    """Variance of the valid entries (over all axes).

    ``Σ_{mask} (x - μ)^2 / (n - 1)`` when ``unbiased`` (Bessel, as TRL/trlx ``masked_var``),
    else ``/ n``. Fewer than 2 (or 1) valid entries give 0.
    """
    mean = masked_mean(x, mask)
    sq = masked_sum(jnp.square(x - mean), mask)
    n = masked_count(mask)
    denom = n - 1.0 if unbiased else n
    return jnp.where(denom > 0, sq / jnp.maximum(denom, 1.0), 0.0)


def masked_whiten(x: Array, mask: Array, *, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """Whitening over the valid entries: ``(x - μ) / sqrt(σ² + eps)`` (+ μ if not
    ``shift_mean``), with μ, σ² the masked mean and unbiased variance. Masked entries are 0.

    Used for PPO advantage whitening (vanilla PPO preset; PPO-max, arXiv:2307.04964, does
    not whiten advantages on top of score normalisation).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(_valid(mask), out, 0.0)


def sequence_logprobs(token_logps: Array, mask: Array, *, average: bool = False) -> Array:
    """Per-sequence log-prob ``Σ_t mask_t logp_t`` (DPO, RM), or the per-token average
    ``Σ_t mask_t logp_t / Σ_t mask_t`` (IPO, SimPO) when ``average``.

    Args:
      token_logps: ``[B, S]`` per-token log-probs (e.g. from :func:`shifted_token_logprobs`).
      mask: ``[B, S]`` completion mask aligned with the same tokens.

    Returns:
      ``[B]`` sums or means.
    """
    chex.assert_rank(token_logps, 2)
    if average:
        return masked_mean(token_logps, mask, axis=-1)
    return masked_sum(token_logps, mask, axis=-1)
