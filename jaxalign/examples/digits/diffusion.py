"""Denoising diffusion as pure functions: the noise schedule, the noising of data, the denoising
loss and the DDIM sampler with classifier-free guidance. The network is any
``eps_fn(x_t [N, D], t [N] int, labels [N] int) -> ε̂ [N, D]``; nothing here knows it.

- DDPM (Ho et al. 2020, arXiv:2006.11239): ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``, trained with the
  "simple" loss ``‖ε − ε_θ(x_t, t, y)‖²``;
- the cosine schedule of ᾱ (Nichol & Dhariwal 2021, arXiv:2102.09672);
- DDIM (Song et al. 2021, arXiv:2010.02502) with η = 0: the sample is a deterministic function
  of the initial noise, so of the key;
- classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): one network, trained with the
  label replaced by a null label some of the time, sampled with
  ``ε̂ = ε_θ(x, t, ∅) + s·(ε_θ(x, t, y) − ε_θ(x, t, ∅))`` (``s = 1``: the plain conditional model).
"""

from __future__ import annotations

import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
EpsFn = Callable[[Array, Array, Array], Array]


def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Array:
    """ᾱ_t for t = 1..T (index ``t − 1``), ``ᾱ_t = f(t)/f(0)``, ``f(t) = cos²((t/T + s)/(1 + s)·π/2)``,
    with each step's β = 1 − ᾱ_t/ᾱ_{t−1} capped at ``max_beta`` (Nichol & Dhariwal 2021, eq. 17)."""
    f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    out, prev = [], 1.0
    for t in range(1, num_steps + 1):
        beta = min(1.0 - f(t) / f(t - 1), max_beta)
        prev = prev * (1.0 - beta)
        out.append(prev)
    return jnp.asarray(out, jnp.float32)


def add_noise(x0: Array, t: Array, noise: Array, alpha_bar: Array) -> Array:
    """``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`` for integer steps ``t [N]`` (0-based index into ``alpha_bar``)."""
    a = alpha_bar[t][:, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def denoising_loss(eps_fn: EpsFn, x0: Array, labels: Array, t: Array, noise: Array, alpha_bar: Array,
                   weight: Array | None = None) -> tuple[Array, Array]:
    """DDPM's simple loss (Ho et al. 2020, eq. 14), a weighted mean over samples and pixels:

    ``L = Σ_i w_i ‖ε_i − ε_θ(√ᾱ_{t_i} x0_i + √(1−ᾱ_{t_i}) ε_i, t_i, y_i)‖² / (D Σ_i w_i)``.

    Args:
      eps_fn: the noise predictor.
      x0: ``[N, D]`` clean samples; labels: ``[N]`` int (the null label for unconditional rows).
      t: ``[N]`` int steps; noise: ``[N, D]`` the ε drawn for each sample.
      alpha_bar: ``[T]`` the schedule.
      weight: ``[N]`` per-sample weights (RAFT: 1 on kept rows, 0 elsewhere); None: all 1.
    Returns:
      ``(loss, Σ w)``: the scalar loss and its weight (what the shared train step averages by).
    """
    chex.assert_rank([x0, labels, t, noise], [2, 1, 1, 2])
    chex.assert_equal_shape([x0, noise])
    w = jnp.ones(x0.shape[:1], jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32)
    err = jnp.mean((noise - eps_fn(add_noise(x0, t, noise, alpha_bar), t, labels)) ** 2, axis=-1)
    total = jnp.sum(w)
    return jnp.sum(w * err) / jnp.maximum(total, 1e-12), total


def guided_eps(eps_fn: EpsFn, x: Array, t: Array, labels: Array, null_label: int, guidance: float) -> Array:
    """Classifier-free guidance: ``ε_∅ + s·(ε_y − ε_∅)``; ``s = 1`` is one conditional call."""
    if guidance == 1.0:
        return eps_fn(x, t, labels)
    both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                  jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
    cond, uncond = jnp.split(both, 2)
    return uncond + guidance * (cond - uncond)


def ddim_sample(eps_fn: EpsFn, key, labels: Array, alpha_bar: Array, *, dim: int, steps: int,
                null_label: int, guidance: float = 1.0, clip: float | None = 1.0) -> Array:
    """DDIM (η = 0) from ``x_T ~ N(0, I)`` drawn with ``key`` to ``x_0``, over ``steps`` evenly
    spaced steps of the schedule; same key and labels, same samples.

    Each step: ``x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t`` (clipped to ``±clip``, the data's range),
    ``ε̂ ← (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t)``, ``x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}) ε̂`` (ᾱ = 1 after the
    last step, so the result is the last x̂_0).

    Args:
      labels: ``[N]`` int class of each sample; guidance: the scale ``s`` (static).
    Returns:
      ``[N, dim]`` samples.
    """
    num = alpha_bar.shape[0]
    ts = jnp.round(jnp.linspace(num - 1, 0, steps)).astype(jnp.int32)
    a_next = jnp.concatenate([alpha_bar[ts[1:]], jnp.ones((1,), alpha_bar.dtype)])
    x = jax.random.normal(key, (labels.shape[0], dim), jnp.float32)

    def step(x, ta):
        t, a_prev = ta
        a = alpha_bar[t]
        eps = guided_eps(eps_fn, x, jnp.full(labels.shape, t), labels, null_label, guidance)
        x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
            eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
        return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

    x, _ = jax.lax.scan(step, x, (ts, a_next))
    return x
