"""Rotary position embeddings (RoPE) as transformers computes them: inverse frequencies with
the supported scalings, cos/sin tables, and the half-split rotation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig, local: bool = False) -> jax.Array:
    """Inverse RoPE frequencies, including linear and Llama-3 scaling (as in transformers).

    ``local``: Gemma 3's sliding layers, unscaled RoPE with base ``rope_local_theta``.
    """
    dim = config.head_dim
    theta = config.rope_local_theta if local else config.rope_theta
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    rs = {} if local else config.rope_scaling_dict
    kind = rs.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor = rs["factor"]
        low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_len = rs.get("original_max_position_embeddings", 8192)
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = jnp.where(medium, smoothed, scaled)
    return inv


def rope_cos_sin(positions: jax.Array, inv_freq: jax.Array):
    """cos/sin tables ``[batch, seq, head_dim]`` for integer ``positions [batch, seq]``."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotate ``x [b, s, heads, hd]`` by the half-split convention of transformers' Llama."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin
