"""The decoding state of :class:`~jaxalign.models.llama.CausalLM`: a preallocated KV cache per
layer, in the layout and dtype the decode loop reads fastest."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig

# From this many rows up the sampler stores decode weights [in, out]
# (``CausalLM.unstacked_layers(transpose=True)``); below it, a matrix-vector product prefers
# the HF [out, in] order and the per-call transpose is not repaid.
TRANSPOSE_MIN_ROWS = 8


def cache_dtype(dtype):
    """The dtype a KV cache is stored in for compute ``dtype``: the compute dtype, except float32
    for 16-bit floats on CPU. XLA:CPU has no 16-bit float arithmetic: it widened every
    ``dynamic_update_slice`` into a bfloat16 cache to float32 and back, rewriting the whole cache
    at every decode step (a quarter of a bfloat16 decode step); stored as uint16 bit patterns
    instead, the loop copied both caches at every step. A float32 cache is written in place and
    its attention dots (a few % of the step) run in float32."""
    from jaxalign.models.abstract import active

    dtype = jnp.dtype(dtype)
    # jaxalign plan plans for an accelerator (its CPU devices stand in for them): the compute dtype.
    if (jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4 and jax.default_backend() == "cpu"
            and active() is None):
        return jnp.dtype(jnp.float32)
    return dtype



@flax.struct.dataclass
class KVCache:
    """Pre-allocated keys/values, one array per layer.

    k, v: tuples, one array per layer, of ``[batch, kv_heads, head_dim, max_len]`` (keys) and
    ``[batch, kv_heads, max_len, head_dim]`` (values), in :func:`cache_dtype`; ``mask``:
    ``[batch, max_len]`` bool, True where a slot holds a real token; ``index``: int32 scalar,
    the number of filled slots (shared by the batch: prompts are left-padded). Per-layer arrays
    (not one stacked ``[layers, ...]`` array) let every decode step update each layer's slot in
    place. The layouts are the operands of
    the two attention dots as XLA wants them (heads as a batch dimension, keys as ``[K, N]``):
    with ``[batch, slot, head, dim]`` XLA copied both caches into that order in every layer at
    every decode step.
    """

    k: tuple
    v: tuple
    mask: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        dtype = cache_dtype(dtype or config.jnp_dtype)
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        k_shape = (batch, config.num_key_value_heads, config.head_dim, max_len)
        n = config.num_hidden_layers
        return cls(
            k=tuple(jnp.zeros(k_shape, dtype) for _ in range(n)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(n)),
            mask=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )
