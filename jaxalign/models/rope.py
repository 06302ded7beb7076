"""Rotary position embeddings (RoPE) as transformers computes them: inverse frequencies with
the supported scalings, cos/sin tables, the half-split rotation, and the token positions they
are taken at (from a padding mask or from packed segment ids)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig, local: bool = False) -> jax.Array:
    """Inverse RoPE frequencies, including linear, Llama-3 and YaRN scaling (as in transformers;
    dynamic NTK depends on the positions: see :func:`rope_tables`).

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
    elif kind == "yarn":
        inv = _yarn_inv_freq(config, rs)
    return inv


def _yarn_factor(rs: dict, config: ModelConfig) -> float:
    old_len = rs.get("original_max_position_embeddings", config.max_position_embeddings)
    return rs.get("factor") or config.max_position_embeddings / old_len


def _yarn_inv_freq(config: ModelConfig, rs: dict) -> jax.Array:
    # YaRN (arXiv:2309.00071) as transformers' _compute_yarn_parameters: interpolate the low
    # frequencies by `factor`, keep the high ones, with a linear ramp between.
    dim, base = config.head_dim, config.rope_theta
    factor = _yarn_factor(rs, config)
    old_len = rs.get("original_max_position_embeddings", config.max_position_embeddings)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def _attention_factor(config: ModelConfig, rs: dict) -> float:
    """The factor on cos/sin: YaRN's ``0.1 ln(factor) + 1`` (or its mscale ratio), else 1."""
    if rs.get("rope_type") != "yarn":
        return 1.0
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    factor = _yarn_factor(rs, config)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rs.get("mscale") and rs.get("mscale_all_dim"):
        return mscale(factor, rs["mscale"]) / mscale(factor, rs["mscale_all_dim"])
    return mscale(factor)


def _dynamic_inv_freq(config: ModelConfig, positions: jax.Array) -> jax.Array:
    # Dynamic NTK (transformers' _compute_dynamic_ntk_parameters + dynamic_rope_update): past
    # max_position_embeddings the base grows with the longest sequence in the call; the
    # frequencies are a traced function of the positions, so one jitted function serves every length.
    rs, dim, max_len = config.rope_scaling_dict, config.head_dim, config.max_position_embeddings
    factor = rs["factor"]
    seq_len = jnp.max(positions).astype(jnp.float32) + 1
    grown = config.rope_theta * ((factor * seq_len / max_len) - (factor - 1)) ** (dim / (dim - 2))
    base = jnp.where(seq_len > max_len, grown, config.rope_theta)
    return 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rope_tables(config: ModelConfig, positions: jax.Array, local: bool = False):
    """cos/sin tables ``[batch, seq, head_dim]`` of ``config``'s RoPE at ``positions``
    (``local``: Gemma 3's sliding layers), with every supported scaling."""
    rs = {} if local else config.rope_scaling_dict
    if rs.get("rope_type") == "dynamic":
        return rope_cos_sin(positions, _dynamic_inv_freq(config, positions))
    cos, sin = rope_cos_sin(positions, rope_inv_freq(config, local=local))
    attention_factor = _attention_factor(config, rs)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


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


def positions_from_mask(attention_mask: jax.Array, offset=None) -> jax.Array:
    """Token positions from a 0/1 mask: real tokens count 0, 1, 2, ... (left or right padding)."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    if offset is not None:
        pos = pos + offset[:, None]
    return jnp.maximum(pos, 0)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions of packed rows: each segment (a run of equal ids) counts 0, 1, 2, ... from its
    first token, as the example would alone in an unpacked row."""
    s = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), segment_ids.shape)
    prev = jnp.concatenate([jnp.full_like(segment_ids[..., :1], -1), segment_ids[..., :-1]], axis=-1)
    start = jax.lax.cummax(jnp.where(segment_ids != prev, idx, 0), axis=segment_ids.ndim - 1)
    return idx - start
