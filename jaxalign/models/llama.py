"""Decoder-only causal LM in flax.nnx: Llama 2/3, SmolLM, Qwen2, Mistral, and on the same
decoder Qwen3 (q/k norms) and Gemma 2/3 (see :mod:`jaxalign.models.families` for what differs).

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

from jaxalign.models.config import REMAT_MODES, ModelConfig, is_remat_mode
from jaxalign.models import attention, fsdp, lora_dropout
from jaxalign.models.kv_cache import TRANSPOSE_MIN_ROWS, KVCache  # noqa: F401  (KVCache re-exported)
from jaxalign.models.matmul import mm
from jaxalign.models.modules import Embedding, Linear, RMSNorm, softcap  # noqa: F401  (re-exported)
from jaxalign.models.rope import (  # noqa: F401  (re-exported)
    apply_rope, positions_from_mask, positions_from_segments, rope_cos_sin, rope_inv_freq, rope_tables)


def _norm(config: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, eps=config.rms_norm_eps, param_dtype=config.jnp_param_dtype, plus_one=config.family.gemma)


class Attention(nnx.Module):
    """Grouped-query attention with RoPE and an optional KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, rngs=rngs)
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = Linear(c.hidden_size, q, bias=c.attention_bias, **kw, name="q_proj")
        self.k_proj = Linear(c.hidden_size, kv, bias=c.attention_bias, **kw, name="k_proj")
        self.v_proj = Linear(c.hidden_size, kv, bias=c.attention_bias, **kw, name="v_proj")
        self.o_proj = Linear(q, c.hidden_size, bias=c.attention_bias and c.family.o_bias, **kw, name="o_proj")
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        # Qwen3 / Gemma 3 normalise each head's queries and keys (over head_dim) before RoPE.
        self.q_norm = _norm(c, c.head_dim) if c.family.qk_norm else None
        self.k_norm = _norm(c, c.head_dim) if c.family.qk_norm else None
        # Scores are divided by sqrt(head_dim), or by sqrt(query_pre_attn_scalar) (Gemma).
        self.score_div = math.sqrt(c.query_pre_attn_scalar or c.head_dim)
        self.softcap = c.attn_logit_softcapping

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None, recompute_scores: bool = False):
        """x ``[b, s, d]``; mask ``[b, s, t]`` bool (query may see key); returns (out, (k, v)).

        ``recompute_scores`` (training passes without a cache): the backward pass recomputes the
        ``[b, heads, s, s]`` scores and probabilities from ``q``, ``k``, ``v`` instead of keeping
        them from the forward pass (see :func:`jaxalign.models.attention.attend`)."""
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, s, self.n_kv, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        g = self.n_heads // self.n_kv
        q = q.reshape(b, s, self.n_kv, g, self.head_dim)
        if layer_cache is None:
            attend = partial(attention.attend, score_div=self.score_div, cap=self.softcap)
            if recompute_scores:
                attend = jax.checkpoint(attend)
            out = attend(q, k, v, mask)
            return self.o_proj(out.reshape(b, s, self.n_heads * self.head_dim)), (k, v)
        ck, cv = layer_cache
        k = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), (0, 0, 0, cache_index))
        v = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), (0, 0, cache_index, 0))
        scores = mm("bkgsh,bkht->bkgst", q.transpose(0, 2, 3, 1, 4), k, k.dtype, out_dtype=jnp.float32)
        probs = attention.probs(scores, mask, self.score_div, self.softcap)
        # Output in the dot's natural order (batch, rows, cols): asking for [b, s, k, g, h]
        # made XLA:CPU swap the operands into a transposed-A dot 2x slower than this one
        # plus a transpose of the small result.
        out = mm("bkgst,bkth->bkgsh", probs, v, v.dtype, out_dtype=q.dtype).transpose(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(b, s, self.n_heads * self.head_dim)), (k, v)


def check_remat(remat) -> None:
    """``remat`` must be one of ``model.remat``'s modes: False, "attention", "dots" or True."""
    if not is_remat_mode(remat):
        *first, last = map(repr, REMAT_MODES)
        raise ValueError(f"remat: expected {', '.join(first)} or {last}, got {remat!r}")


class MLP(nnx.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))``: SwiGLU (silu), or GeGLU with tanh-approximated
    gelu (Gemma's ``gelu_pytorch_tanh``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(bias=False, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, rngs=rngs)
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, **kw, name="gate_proj")
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, **kw, name="up_proj")
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, **kw, name="down_proj")
        self.gelu = c.hidden_act == "gelu_pytorch_tanh"

    def __call__(self, x):
        g = self.gate_proj(x)
        g = jax.nn.gelu(g, approximate=True) if self.gelu else jax.nn.silu(g)
        return self.down_proj(g * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm transformer block: attention and gated MLP, each with a residual.

    Gemma also normalises each branch's output before its residual add; there
    ``post_attention_layernorm`` is that norm after attention (HF's names), and the MLP has its
    own ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm``.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.input_layernorm = _norm(config, d)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = _norm(config, d)
        self.mlp = MLP(config, rngs=rngs)
        gemma = config.family.gemma
        self.pre_feedforward_layernorm = _norm(config, d) if gemma else None
        self.post_feedforward_layernorm = _norm(config, d) if gemma else None

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None, recompute_scores: bool = False):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, cache_index,
                                   recompute_scores=recompute_scores)
        if self.pre_feedforward_layernorm is not None:  # Gemma
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), new_kv
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


def _stacked_layers(config: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """One DecoderLayer whose every parameter has a leading ``[num_hidden_layers]`` axis."""
    keys = jax.random.split(rngs.params(), config.num_hidden_layers)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: DecoderLayer(config, rngs=nnx.Rngs(0))))
    state = jax.vmap(lambda k: nnx.state(DecoderLayer(config, rngs=nnx.Rngs(k))))(keys)
    return nnx.merge(graphdef, state)


class CausalLM(nnx.Module):
    """Decoder-only LM of any supported family (:mod:`jaxalign.models.families`).

    ``model(input_ids, attention_mask)`` returns logits ``[batch, seq, vocab]`` in the compute
    dtype. With ``cache=`` it returns ``(logits, new_cache)`` and appends the new tokens to the
    cache (used by the sampler).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = config.jnp_param_dtype
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, param_dtype=pd, rngs=rngs)
        self.layers = _stacked_layers(config, rngs)
        self.norm = _norm(config, config.hidden_size)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Embedding(config.vocab_size, config.hidden_size, param_dtype=pd, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Input embeddings in the compute dtype, as the first layer sees them (what
        ``inputs_embeds`` means): Gemma's are scaled by sqrt(hidden_size), the scale rounded to
        the table's dtype first, as transformers' ``Gemma*TextScaledWordEmbedding`` does."""
        x = self.embed_tokens(input_ids)
        if self.config.family.gemma:
            x = x * jnp.asarray(math.sqrt(self.config.hidden_size), x.dtype)
        return x.astype(self.config.jnp_dtype)

    def output_embedding(self) -> jax.Array:
        """The ``[vocab, hidden]`` matrix that maps final hidden states to logits."""
        table = self.embed_tokens if self.lm_head is None else self.lm_head
        return table.weight[...]

    def head_weight(self) -> jax.Array:
        """:meth:`output_embedding` whole on every device in a sharded forward (FSDP gathers
        it where it is used; its gradient goes back split like the weight)."""
        return fsdp.whole(self.output_embedding(), ("lm_head", "weight"))

    def logits_from_hidden(self, hidden: jax.Array, table: jax.Array | None = None) -> jax.Array:
        """Logits ``[b, s, vocab]``; ``table``: the output embedding already cast (decode loops)."""
        dtype = self.config.jnp_dtype
        logits = mm("bsd,vd->bsv", hidden, self.head_weight() if table is None else table, dtype)
        return softcap(logits, self.config.final_logit_softcapping)

    def hidden_states(
        self,
        input_ids=None,
        attention_mask=None,
        *,
        inputs_embeds=None,
        positions=None,
        cache: KVCache | None = None,
        remat: bool | str = False,
        layers: list | None = None,
        segment_ids=None,
        prefix_ids=None,
    ):
        """Final-norm hidden states ``[b, s, d]``; and the updated cache when one is given.

        ``layers``: with a cache, the result of :meth:`unstacked_layers` to reuse across calls.
        ``segment_ids``: ``[b, s]`` ids of the examples packed into each row
        (:mod:`jaxalign.data.packing`): a token attends only to earlier tokens of its own
        segment, and positions restart at each segment (unless ``positions`` are given).
        ``prefix_ids`` (with ``segment_ids``): ``[b, s]``, the id of one more segment each token
        may attend to (0: none), e.g. the prompt a preference pair's two sequences share; a
        sliding window then counts positions, not row slots.
        ``remat`` (training passes): ``True`` recomputes each decoder block in the backward pass
        (``model.remat: true``); ``"dots"`` keeps only the outputs of the block's weight matmuls
        (the q/k/v/o and MLP projections) and recomputes the rest: norms, RoPE, the gated
        activation and the attention; ``"attention"`` recomputes only each layer's attention
        scores and probabilities (:func:`jaxalign.models.attention.attend`); ``False`` keeps every activation.
        """
        cfg = self.config
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
        b, s = x.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), jnp.int32)
        am = attention_mask.astype(bool)
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for training passes, not with a KV cache")
        if prefix_ids is not None and segment_ids is None:
            raise ValueError("prefix_ids name segments: they need segment_ids")
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
        causal = k_slot[None, :] <= q_slot[:, None]
        # Per layer kind (sliding or not): its (cos, sin, mask). The window counts cache slots,
        # as transformers' masks count cache positions (left padding included).
        kinds = cfg.sliding_layers
        ctx = {}
        for sliding in sorted(set(kinds)):
            allowed = causal
            if sliding and cfg.sliding_window is not None:
                if prefix_ids is not None:  # a shared prompt sits further back in the row than in its sequence
                    allowed = causal[None] & (positions[:, :, None] - positions[:, None, :] < cfg.sliding_window)
                else:
                    allowed = causal & (q_slot[:, None] - k_slot[None, :] < cfg.sliding_window)
            local = sliding and cfg.rope_local_theta is not None
            cos, sin = rope_tables(cfg, positions, local=local)
            mask = (allowed if allowed.ndim == 3 else allowed[None]) & key_mask[:, None, :]
            if segment_ids is not None:
                # Block-diagonal: the causal mask within each packed example, nothing across them.
                same = segment_ids[:, :, None] == segment_ids[:, None, :]
                if prefix_ids is not None:
                    same |= (prefix_ids[:, :, None] == segment_ids[:, None, :]) & (prefix_ids[:, :, None] > 0)
                mask &= same
            ctx[sliding] = (cos, sin, mask)

        if cache is not None:
            # Decoding: the layers run one after another, each with its own weights (sliced and
            # cast once per call by ``unstacked_layers``, or once per generate call by the
            # sampler) and its own cache array. Inside a scan, every step would copy each
            # layer's weight slice and the stacked cache again (2x slower decode on CPU).
            layers = self.unstacked_layers(transpose=b >= TRANSPOSE_MIN_ROWS) if layers is None else layers
            ks, vs = [], []
            with lora_dropout.active(None):  # decoding never drops
                for layer, kind, ck, cv in zip(layers, kinds, cache.k, cache.v, strict=True):
                    x, (k, v) = layer(x, *ctx[kind], (ck, cv), index)
                    ks.append(k)
                    vs.append(v)
            new_cache = KVCache(k=tuple(ks), v=tuple(vs), mask=key_mask, index=index + s)
            return self.norm(x), new_cache

        graphdef, layer_state = nnx.split(self.layers)
        check_remat(remat)
        recompute = remat == "attention"
        if len(ctx) == 1:
            (layer_ctx,) = ctx.values()

            def body(h, lstate):
                return nnx.merge(graphdef, lstate)(h, *layer_ctx, recompute_scores=recompute)[0], None

            xs = layer_state
        else:
            # Mixed sliding / global layers (Gemma): one scanned body that selects its layer's
            # mask and RoPE tables by a scanned flag, so compile time stays flat in depth.
            def body(h, xs):
                lstate, sliding = xs
                layer_ctx = jax.tree.map(lambda a, b: jnp.where(sliding, a, b), ctx[True], ctx[False])
                return nnx.merge(graphdef, lstate)(h, *layer_ctx, recompute_scores=recompute)[0], None

            xs = (layer_state, jnp.asarray(kinds))

        drop_key = lora_dropout.current()
        if drop_key is not None:
            # LoRA dropout in a training forward: each scanned layer gets its own key.
            inner = body

            def body(h, xs_and_key):
                xs, key = xs_and_key
                with lora_dropout.active(key):
                    return inner(h, xs)

            xs = (xs, jax.random.split(drop_key, cfg.num_hidden_layers))
        if remat is True:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        elif remat == "dots":
            # Keep what costs FLOPs to redo (the projections: dots with no batch dimension), redo
            # what costs memory to keep: the elementwise ops' float32 outputs and the attention,
            # whose scores and probabilities are batched dots and softmaxes over [b, heads, s, s].
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        x, _ = jax.lax.scan(body, x, xs)
        return self.norm(x)

    def unstacked_layers(self, transpose: bool = True) -> list[DecoderLayer]:
        """The decoder layers as separate modules for decoding, weights cast to the compute dtype;
        with ``transpose`` every ``Linear`` weight is stored ``[in, out]`` (``Linear.transposed``).

        ``[in, out]`` makes XLA:CPU's small-M dots (decoding at batch 16) ~15 % faster in float32,
        but the transpose costs a pass over the weights per call, and at batch 1 (a matrix-vector
        product) the HF ``[out, in]`` order is the faster one; the sampler picks by batch size.
        """
        graphdef, state = nnx.split(self.layers)
        if any(isinstance(n, Linear) and n.quant for _, n in nnx.iter_graph(self.layers)):
            # QLoRA: dequantised once per call here, not in every decoding step.
            copy = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
            for _, lin in nnx.iter_graph(copy):
                if isinstance(lin, Linear) and lin.quant:
                    lin.weight = nnx.Param(lin.base_weight())
                    lin.weight_scale = nnx.data(None)
                    lin.quant = None
            graphdef, state = nnx.split(copy)
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
                 cache: KVCache | None = None, remat: bool | str = False, segment_ids=None, prefix_ids=None):
        out = self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds, positions=positions,
                                 cache=cache, remat=remat, segment_ids=segment_ids, prefix_ids=prefix_ids)
        if cache is None:
            return self.logits_from_hidden(out)
        hidden, new_cache = out
        return self.logits_from_hidden(hidden), new_cache


def init_model(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A randomly initialised model (normal(0, 0.02) weights, unit norms), unsharded."""
    return CausalLM(config, rngs=nnx.Rngs(seed))
