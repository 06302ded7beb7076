"""Llama-family causal LM in flax.nnx (Llama 2/3, SmolLM, Qwen2, Mistral).

Weights are stored in Hugging Face layout and naming (``Linear.weight`` is ``[out, in]``,
parameter paths equal HF names minus the ``model.`` prefix), so loading and exporting are
renames, never transposes, and a sharded load can read each device's slice straight from the
safetensors file. The decoder layers are one ``DecoderLayer`` whose parameters carry a leading
``layers`` axis, run with ``lax.scan``: compile time does not grow with depth.
"""

from __future__ import annotations

import math
from functools import partial

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import TRANSPOSE_MIN_ROWS, KVCache  # noqa: F401  (KVCache re-exported)

_INIT_STD = 0.02  # transformers' initializer_range default for these families


def mm(spec: str, a, b, dtype, out_dtype=None):
    """``einsum(spec, a, b)`` with operands in ``dtype`` and float32 accumulation, cast to
    ``out_dtype`` (default ``dtype``).

    Float32 accumulation is what makes low-precision matmuls fast on CPU: XLA:CPU runs a
    bfloat16 x bfloat16 -> float32 dot on the AVX-512 BF16 units (2-3.5x its float32 rate at
    SmolLM2's decode shapes), but a bfloat16 -> bfloat16 dot 2-5x *slower* than float32 (see
    benchmarks/README.md, "bfloat16 matmuls"). It is also how GPUs and TPUs accumulate bfloat16.
    The backward pass keeps the same form (see :func:`_mm_low`). For float32 it is a plain einsum.
    """
    out_dtype = jnp.dtype(out_dtype or dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype)).astype(out_dtype)
    return _mm_low(spec, out_dtype, a.astype(dtype), b.astype(dtype))


def _transpose_specs(spec: str):
    """For ``"A,B->C"`` the specs of the two gradients, ``"C,B->A"`` and ``"C,A->B"``."""
    ins, out = spec.split("->")
    a, b = ins.split(",")
    return f"{out},{b}->{a}", f"{out},{a}->{b}"


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mm_low(spec, out_dtype, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _mm_low_fwd(spec, out_dtype, a, b):
    return _mm_low(spec, out_dtype, a, b), (a, b)


def _mm_low_bwd(spec, out_dtype, res, g):
    # JAX's own transpose of a dot with preferred_element_type=float32 feeds the float32 cotangent
    # into float32 dots (the bfloat16 operand is upcast): the backward would run at float32 speed
    # on CPU and, on a TPU, as a multi-pass float32 matmul. Here both gradient dots are again
    # low-precision x low-precision -> float32.
    a, b = res
    spec_a, spec_b = _transpose_specs(spec)
    g = g.astype(a.dtype)
    da = jnp.einsum(spec_a, g, b, preferred_element_type=jnp.float32).astype(a.dtype)
    db = jnp.einsum(spec_b, g, a, preferred_element_type=jnp.float32).astype(b.dtype)
    return da, db


_mm_low.defvjp(_mm_low_fwd, _mm_low_bwd)


def _normal(rngs: nnx.Rngs, shape, dtype):
    return _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype)


class Linear(nnx.Module):
    """``y = x @ weight.T + bias`` with ``weight`` in torch layout ``[out, in]``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(_normal(rngs, (d_out, d_in), param_dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype)) if bias else None
        self.dtype = dtype
        self.transposed = False  # weight stored [in, out] (decoding, see CausalLM.unstacked_layers)

    def __call__(self, x):
        y = mm("...i,io->...o" if self.transposed else "...i,oi->...o", x, self.weight[...], self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, scaled after casting back (as transformers does)."""

    def __init__(self, dim: int, *, eps: float, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(dtype) * x32.astype(dtype)


def rope_inv_freq(config: ModelConfig) -> jax.Array:
    """Inverse RoPE frequencies, including linear and Llama-3 scaling (as in transformers)."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    rs = config.rope_scaling_dict
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


class Attention(nnx.Module):
    """Grouped-query attention with RoPE and an optional KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, rngs=rngs)
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = Linear(c.hidden_size, q, bias=c.attention_bias, **kw)
        self.k_proj = Linear(c.hidden_size, kv, bias=c.attention_bias, **kw)
        self.v_proj = Linear(c.hidden_size, kv, bias=c.attention_bias, **kw)
        self.o_proj = Linear(q, c.hidden_size, bias=False, **kw)
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.sliding_window = c.sliding_window

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        """x ``[b, s, d]``; mask ``[b, s, t]`` bool (query may see key); returns (out, (k, v))."""
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, s, self.n_kv, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.n_kv, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        g = self.n_heads // self.n_kv
        q = q.reshape(b, s, self.n_kv, g, self.head_dim)
        if layer_cache is None:
            new_kv = (k, v)
            scores = mm("bskgh,btkh->bkgst", q, k, q.dtype, out_dtype=jnp.float32)
        else:
            ck, cv = layer_cache
            k = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), (0, 0, 0, cache_index))
            v = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), (0, 0, cache_index, 0))
            new_kv = (k, v)
            scores = mm("bkgsh,bkht->bkgst", q.transpose(0, 2, 3, 1, 4), k, k.dtype, out_dtype=jnp.float32)
        scores = scores / math.sqrt(self.head_dim)
        # A finite fill keeps fully-masked rows (left padding) NaN-free; their outputs are unused.
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        if layer_cache is None:
            out = mm("bkgst,btkh->bskgh", probs, v, q.dtype)
        else:
            # Output in the dot's natural order (batch, rows, cols): asking for [b, s, k, g, h]
            # made XLA:CPU swap the operands into a transposed-A dot 2x slower than this one
            # plus a transpose of the small result.
            out = mm("bkgst,bkth->bkgsh", probs, v, v.dtype, out_dtype=q.dtype).transpose(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(b, s, self.n_heads * self.head_dim)), new_kv


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(bias=False, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, rngs=rngs)
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, **kw)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, **kw)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm transformer block: attention and SwiGLU MLP, each with a residual."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pd = config.jnp_param_dtype
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=pd)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=pd)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


def _stacked_layers(config: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """One DecoderLayer whose every parameter has a leading ``[num_hidden_layers]`` axis."""
    keys = jax.random.split(rngs.params(), config.num_hidden_layers)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: DecoderLayer(config, rngs=nnx.Rngs(0))))
    state = jax.vmap(lambda k: nnx.state(DecoderLayer(config, rngs=nnx.Rngs(k))))(keys)
    return nnx.merge(graphdef, state)


class Embedding(nnx.Module):
    """Token embedding table ``weight [vocab, hidden]``."""

    def __init__(self, vocab: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(_normal(rngs, (vocab, dim), param_dtype))

    def __call__(self, ids):
        return jnp.take(self.weight[...], ids, axis=0)


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


class CausalLM(nnx.Module):
    """Llama-family decoder-only LM.

    ``model(input_ids, attention_mask)`` returns logits ``[batch, seq, vocab]`` in the compute
    dtype. With ``cache=`` it returns ``(logits, new_cache)`` and appends the new tokens to the
    cache (used by the sampler).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = config.jnp_param_dtype
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, param_dtype=pd, rngs=rngs)
        self.layers = _stacked_layers(config, rngs)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=pd)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Embedding(config.vocab_size, config.hidden_size, param_dtype=pd, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens(input_ids).astype(self.config.jnp_dtype)

    def output_embedding(self) -> jax.Array:
        """The ``[vocab, hidden]`` matrix that maps final hidden states to logits."""
        table = self.embed_tokens if self.lm_head is None else self.lm_head
        return table.weight[...]

    def logits_from_hidden(self, hidden: jax.Array, table: jax.Array | None = None) -> jax.Array:
        """Logits ``[b, s, vocab]``; ``table``: the output embedding already cast (decode loops)."""
        dtype = self.config.jnp_dtype
        return mm("bsd,vd->bsv", hidden, self.output_embedding() if table is None else table, dtype)

    def hidden_states(
        self,
        input_ids=None,
        attention_mask=None,
        *,
        inputs_embeds=None,
        positions=None,
        cache: KVCache | None = None,
        remat: bool = False,
        layers: list | None = None,
        segment_ids=None,
    ):
        """Final-norm hidden states ``[b, s, d]``; and the updated cache when one is given.

        ``layers``: with a cache, the result of :meth:`unstacked_layers` to reuse across calls.
        ``segment_ids``: ``[b, s]`` ids of the examples packed into each row
        (:mod:`jaxalign.data.packing`): a token attends only to earlier tokens of its own
        segment, and positions restart at each segment (unless ``positions`` are given).
        """
        cfg = self.config
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
        b, s = x.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), jnp.int32)
        am = attention_mask.astype(bool)
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for training passes, not with a KV cache")
        if cache is None:
            if positions is None:
                positions = positions_from_mask(am) if segment_ids is None else positions_from_segments(segment_ids)
            q_slot = k_slot = jnp.arange(s)
            key_mask = am
            index = None
        else:
            if positions is None:
                positions = positions_from_mask(am, offset=cache.mask.sum(-1).astype(jnp.int32))
            index = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, am, (0, index))
            q_slot = index + jnp.arange(s)
            k_slot = jnp.arange(cache.mask.shape[1])
        allowed = k_slot[None, :] <= q_slot[:, None]
        if cfg.sliding_window is not None:
            allowed &= q_slot[:, None] - k_slot[None, :] < cfg.sliding_window
        mask = allowed[None] & key_mask[:, None, :]
        if segment_ids is not None:
            # Block-diagonal: the causal mask within each packed example, nothing across them.
            mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
        cos, sin = rope_cos_sin(positions, rope_inv_freq(cfg))

        if cache is not None:
            # Decoding: the layers run one after another, each with its own weights (sliced and
            # cast once per call by ``unstacked_layers``, or once per generate call by the
            # sampler) and its own cache array. Inside a scan, every step would copy each
            # layer's weight slice and the stacked cache again (2x slower decode on CPU).
            layers = self.unstacked_layers(transpose=b >= TRANSPOSE_MIN_ROWS) if layers is None else layers
            ks, vs = [], []
            for layer, ck, cv in zip(layers, cache.k, cache.v, strict=True):
                x, (k, v) = layer(x, cos, sin, mask, (ck, cv), index)
                ks.append(k)
                vs.append(v)
            new_cache = KVCache(k=tuple(ks), v=tuple(vs), mask=key_mask, index=index + s)
            return self.norm(x), new_cache

        graphdef, layer_state = nnx.split(self.layers)

        def body(h, lstate):
            return nnx.merge(graphdef, lstate)(h, cos, sin, mask)[0], None

        if remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        x, _ = jax.lax.scan(body, x, layer_state)
        return self.norm(x)

    def unstacked_layers(self, transpose: bool = True) -> list[DecoderLayer]:
        """The decoder layers as separate modules for decoding, weights cast to the compute dtype;
        with ``transpose`` every ``Linear`` weight is stored ``[in, out]`` (``Linear.transposed``).

        ``[in, out]`` makes XLA:CPU's small-M dots (decoding at batch 16) ~15 % faster in float32,
        but the transpose costs a pass over the weights per call, and at batch 1 (a matrix-vector
        product) the HF ``[out, in]`` order is the faster one; the sampler picks by batch size.
        """
        graphdef, state = nnx.split(self.layers)
        dtype = self.config.jnp_dtype

        def prepare(x):
            x = x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
            # A layer's only 2-D parameters are its Linear weights, [layers, out, in] stacked.
            # One swap over the stack: XLA fuses it into each layer's slice (a transpose per
            # layer after the slice was a third pass over the weights).
            return jnp.swapaxes(x, 1, 2) if transpose and x.ndim == 3 else x

        state = jax.tree.map(prepare, state)
        layers = [nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))
                  for i in range(self.config.num_hidden_layers)]
        for layer in layers:
            for _, lin in nnx.iter_graph(layer):
                if isinstance(lin, Linear):
                    lin.transposed = transpose
        return layers

    def __call__(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, positions=None,
                 cache: KVCache | None = None, remat: bool = False, segment_ids=None):
        out = self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                                 positions=positions, cache=cache, remat=remat, segment_ids=segment_ids)
        if cache is None:
            return self.logits_from_hidden(out)
        hidden, new_cache = out
        return self.logits_from_hidden(hidden), new_cache


def init_model(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A randomly initialised model (normal(0, 0.02) weights, unit norms), unsharded."""
    return CausalLM(config, rngs=nnx.Rngs(seed))
