"""Next-token selection: temperature, top-k and top-p (nucleus) filters, per-row random keys.

The filters are applied in the order transformers applies its logits warpers
(temperature, then top-k, then top-p), so a configuration means the same thing in both.
They only decide which tokens may be *drawn*; the log-prob the sampler reports is always the
one of the full temperature-scaled softmax (see :func:`jaxalign.rollout.generate`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def top_k_filter(logits: Array, k: int) -> Array:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf``.

    Tokens tied with the ``k``-th largest value are kept too (so a row can keep more than
    ``k`` tokens when values repeat); ``k >= vocab`` keeps everything.

    Args:
      logits: ``[..., V]`` float logits (already divided by the temperature).
      k: a static positive int.
    """
    if k <= 0:
        raise ValueError(f"top_k must be positive, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Array, p) -> Array:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches ``p``.

    Tokens are ranked by probability ``softmax(logits)``; token ``i`` (in descending order) is
    kept iff the mass of the tokens ranked before it is ``< p``. The most likely token is
    therefore always kept, and the kept mass is ``>= p``. Tokens tied with the last kept one
    are kept as well. Others become ``-inf``. Same rule as transformers' ``TopPLogitsWarper``
    (which removes tokens whose ascending cumulative mass is ``<= 1 - p``), up to ties and
    float rounding at the boundary.

    Args:
      logits: ``[..., V]`` float logits (``-inf`` entries allowed, e.g. after top-k).
      p: a float or a traced scalar in ``(0, 1]``.
    """
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(mass_before < p, axis=-1, keepdims=True)
    n_keep = jnp.maximum(n_keep, 1)
    cutoff = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def filter_logits(logits: Array, temperature, *, top_k: int | None = None, top_p=None) -> Array:
    """``logits / temperature`` (in float32) followed by the optional top-k and top-p filters."""
    x = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None:
        x = top_p_filter(x, top_p)
    return x


def row_keys(key: Array, n_rows: int) -> Array:
    """One key per batch row, ``fold_in(key, row)``.

    A row's draws then depend only on ``(key, row index, step)``: not on the batch size, on
    the padding rows added for sharding, or on how the batch is split over devices.
    """
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n_rows, dtype=jnp.uint32))


def first_argmax(x: Array) -> Array:
    """``jnp.argmax(x, -1)`` as int32 (the first maximum; the first NaN if there is one),
    computed as a max and a min: XLA:CPU's argmax (a reduce over (value, index) pairs) took
    2.5 ms on ``[16, 49152]`` logits, 5x this, at every decode step."""
    m = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where((x == m) | jnp.isnan(x), idx, x.shape[-1]), axis=-1).astype(jnp.int32)


def sample_tokens(logits: Array, keys: Array, step, temperature, *, top_k: int | None = None,
                  top_p=None, greedy: bool = False) -> Array:
    """Next token of each row: argmax if ``greedy``, else a draw from the filtered softmax.

    Args:
      logits: ``[N, V]`` next-token logits (any float dtype).
      keys: ``[N]`` per-row keys from :func:`row_keys`; step ``t`` uses ``fold_in(key, t)``.
      step: the decode step (int or traced int32).
      temperature: the sampling temperature ``T > 0`` (ignored when ``greedy``).
    Returns:
      ``[N]`` int32 token ids.
    """
    if greedy:
        return first_argmax(logits.astype(jnp.float32))
    x = filter_logits(logits, temperature, top_k=top_k, top_p=top_p)
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, x).astype(jnp.int32)
