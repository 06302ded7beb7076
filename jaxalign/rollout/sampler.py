"""``generate``: prefill plus a ``lax.while_loop`` decode over a preallocated KV cache, in one jit.

Layout of every output row (``P`` = prompt length as given, ``T`` = ``max_new_tokens``)::

    tokens          [pad .. pad  prompt ..  | c_0 c_1 .. EOS pad pad ]   [N, P + T]
    attention_mask  [ 0  ..  0   1  ..   1  |  1   1  ..  1   0   0  ]
    completion_mask [ 0  ..  0   0  ..   0  |  1   1  ..  1   0   0  ]
    logprobs                                [ l_0 l_1 .. l_e  0   0  ]   [N, T]

``N = batch * num_samples``; the samples of prompt ``b`` are the adjacent rows
``b * num_samples + s`` for ``s = 0 .. num_samples - 1`` (``jnp.repeat`` order).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.nnx as nnx
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaxalign import parallel as shd
from jaxalign.errors import JaxalignError
from jaxalign.losses.logprobs import token_logprobs
from jaxalign.models.kv_cache import TRANSPOSE_MIN_ROWS, KVCache
from jaxalign.rollout.arguments import (DEFAULT_BUCKETS, SamplingSpec, as_key, checked_prompts, eos_tuple,
                                        padded_rows, prompt_bucket_length, sampler_inputs,
                                        sampling_spec)
from jaxalign.rollout.sampling import row_keys, sample_tokens

Array = jax.Array

@flax.struct.dataclass
class Rollout:
    """The output of :func:`generate` (a pytree; ``prompt_length`` is static).

    Attributes:
      tokens: ``[N, P + T]`` int32, the left-padded prompt followed by the completion; after the
        first EOS (and in rows that stopped early) the completion holds ``pad_token_id``.
      attention_mask: ``[N, P + T]`` int32, 1 on real prompt tokens and on completion tokens.
      completion_mask: ``[N, P + T]`` int32, 1 on generated tokens up to and including the first
        EOS, 0 on the prompt and after it. Aligned with ``tokens``, like the masks the losses take.
      logprobs: ``[N, T]`` float32, log-prob of each generated token under
        ``log_softmax(logits / T)`` (the full, unfiltered softmax); 0 where the completion mask
        is 0. :meth:`aligned_logprobs` gives them aligned with ``tokens``.
      lengths: ``[N]`` int32, number of completion tokens (the EOS included).
      finished: ``[N]`` bool, the completion ended with an EOS (False: it hit ``max_new_tokens``).
      prompt_length: ``P`` (static).
    """

    tokens: Array
    attention_mask: Array
    completion_mask: Array
    logprobs: Array
    lengths: Array
    finished: Array
    prompt_length: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def completion_ids(self) -> Array:
        """``[N, T]`` generated token ids."""
        return self.tokens[:, self.prompt_length:]

    @property
    def generated_mask(self) -> Array:
        """``[N, T]`` completion mask over the generated slots (matches :attr:`logprobs`)."""
        return self.completion_mask[:, self.prompt_length:]

    def aligned_logprobs(self) -> Array:
        """``[N, P + T]`` log-probs aligned with ``tokens`` (0 on the prompt), the layout of
        :func:`jaxalign.losses.logprobs.shifted_token_logprobs`."""
        pad = jnp.zeros((self.logprobs.shape[0], self.prompt_length), self.logprobs.dtype)
        return jnp.concatenate([pad, self.logprobs], axis=1)


def _batch_spec_sharding(mesh, shape, logical):
    if mesh is None:
        return None
    return NamedSharding(mesh, shd.logical_to_spec(logical, shape, mesh))


def _constrain(x, mesh, logical):
    s = _batch_spec_sharding(mesh, x.shape, logical)
    return x if s is None else jax.lax.with_sharding_constraint(x, s)


def _constrain_cache(cache: KVCache, mesh) -> KVCache:
    kv_axes = ("batch", "kv_heads", "seq", None)
    k_axes = ("batch", "kv_heads", None, "seq")
    return KVCache(k=tuple(_constrain(k, mesh, k_axes) for k in cache.k),
                   v=tuple(_constrain(v, mesh, kv_axes) for v in cache.v),
                   mask=_constrain(cache.mask, mesh, ("batch", "seq")), index=cache.index)


@partial(jax.jit, static_argnames=("graphdef", "spec", "mesh"))
def _generate_jit(graphdef, state, prompt_ids, prompt_mask, row_valid, key, temperature, top_p,
                  eos, pad_id, *, spec: SamplingSpec, mesh):
    model = nnx.merge(graphdef, state)
    b, p = prompt_ids.shape
    n, t_max = spec.num_samples, spec.max_new_tokens
    cache = _constrain_cache(KVCache.init(model.config, b, p + t_max), mesh)
    # Masked prompt slots are fed token 0: an out-of-range pad id would embed as NaN, and
    # 0 * NaN in the attention would leak into real positions.
    feed = jnp.where(prompt_mask > 0, prompt_ids, 0)
    # Weights sliced per layer and cast to the compute dtype once, outside the decode loop.
    layers = model.unstacked_layers(transpose=b * n >= TRANSPOSE_MIN_ROWS)
    table = model.output_embedding().astype(model.config.jnp_dtype)
    hidden, cache = model.hidden_states(feed, prompt_mask, cache=cache, layers=layers)
    logits = model.logits_from_hidden(hidden[:, -1:], table)[:, 0]
    if n > 1:
        # Prefill once per prompt, then give each sample its own copy of the cache.
        rep = partial(jnp.repeat, repeats=n, total_repeat_length=b * n)
        cache = KVCache(k=tuple(rep(k, axis=0) for k in cache.k), v=tuple(rep(v, axis=0) for v in cache.v),
                        mask=rep(cache.mask, axis=0), index=cache.index)
        logits, row_valid = rep(logits, axis=0), rep(row_valid, axis=0)
    cache = _constrain_cache(cache, mesh)
    rows = b * n
    keys = row_keys(key, rows)

    def emit(t, logits, bufs, finished, done):
        tok = sample_tokens(logits, keys, t, temperature, top_k=spec.top_k,
                            top_p=top_p if spec.use_top_p else None, greedy=spec.greedy)
        lp = token_logprobs(logits[:, None], tok[:, None], temperature=temperature)[:, 0]
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        lp = jnp.where(live, lp, 0.0)
        hit = live & jnp.any(tok[:, None] == eos[None, :], axis=-1)
        bufs = tuple(jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, t))
                     for buf, x in zip(bufs, (tok, lp, live)))
        return tok, live, bufs, finished | hit, done | hit

    # The mask is recorded as written (not recomputed from token values: pad may equal an EOS
    # id, and slots after an early stop are never written).
    bufs = (jnp.full((rows, t_max), pad_id, jnp.int32), jnp.zeros((rows, t_max), jnp.float32),
            jnp.zeros((rows, t_max), jnp.int32))
    bufs = tuple(_constrain(x, mesh, ("batch", None)) for x in bufs)
    finished = jnp.zeros((rows,), bool)
    tok, live, bufs, finished, done = emit(0, logits, bufs, finished, ~row_valid)

    def cond(carry):
        t, done = carry[0], carry[-1]
        return (t < t_max) & ~jnp.all(done)

    def body(carry):
        t, tok, live, cache, bufs, finished, done = carry
        hidden, cache = model.hidden_states(jnp.where(live, tok, 0)[:, None],
                                            live.astype(jnp.int32)[:, None], cache=cache, layers=layers)
        logits = model.logits_from_hidden(hidden, table)[:, 0]
        tok, live, bufs, finished, done = emit(t, logits, bufs, finished, done)
        return t + 1, tok, live, cache, bufs, finished, done

    carry = (jnp.int32(1), tok, live, cache, bufs, finished, done)
    *_, (toks, lps, gen_mask), finished, _ = jax.lax.while_loop(cond, body, carry)

    ids, pmask = prompt_ids, prompt_mask.astype(jnp.int32)
    if n > 1:
        ids = jnp.repeat(ids, n, axis=0, total_repeat_length=rows)
        pmask = jnp.repeat(pmask, n, axis=0, total_repeat_length=rows)
    tokens = jnp.concatenate([ids, toks], axis=1)
    attention_mask = jnp.concatenate([pmask, gen_mask], axis=1)
    completion_mask = jnp.concatenate([jnp.zeros_like(pmask), gen_mask], axis=1)
    out = (tokens, attention_mask, completion_mask, lps, gen_mask.sum(-1), finished)
    return tuple(_constrain(x, mesh, ("batch",) + (None,) * (x.ndim - 1)) for x in out)


def _split(model_or_state):
    if isinstance(model_or_state, tuple) and len(model_or_state) == 2:
        return model_or_state
    if isinstance(model_or_state, nnx.Module):
        return nnx.split(model_or_state)
    raise JaxalignError("generate: expected a CausalLM or a (graphdef, state) pair, "
                        f"got {type(model_or_state).__name__}")


def _mesh_of(state):
    """The mesh the parameters are sharded over, if any (set by ``shard_model`` / a sharded load)."""
    for leaf in jax.tree.leaves(state):
        s = getattr(leaf, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh.size > 1:
            return s.mesh
    return None


def generate(model_or_state, prompt_ids, prompt_mask, key, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             greedy: bool = False, eos_token_ids, pad_token_id: int, num_samples: int = 1,
             buckets: Sequence[int] | None = DEFAULT_BUCKETS, mesh=None) -> Rollout:
    """Sample completions of left-padded prompts: prefill, then a KV-cached decode loop.

    Everything runs inside one jitted function (prefill, then ``lax.while_loop`` over decode
    steps that stops as soon as every row has emitted an EOS). It is compiled once per
    (model graph, bucketed prompt shape, batch size, ``max_new_tokens``, ``num_samples``,
    ``greedy``, ``top_k``, whether ``top_p`` is set, the number of EOS ids); ``temperature``,
    the value of ``top_p``, the EOS ids and the pad id are traced, so changing them does not
    recompile.

    **Log-probs.** ``Rollout.logprobs[i, t]`` is ``log_softmax(logits / temperature)`` of the
    sampled token under the *full* vocabulary, not under the top-k/top-p truncated
    distribution it was drawn from: the quantity the training forward computes
    (``jaxalign.losses.logprobs.shifted_token_logprobs(forward_logits(...), tokens,
    temperature=T)``), so PPO ratios start at exactly 1. With ``greedy=True`` the token is the
    argmax and its log-prob is taken at the given ``temperature`` (1.0 unless you pass one);
    ``temperature=0`` means greedy with log-probs at temperature 1.

    **Order.** Row ``b * num_samples + s`` is sample ``s`` of prompt ``b``. The prompt is
    prefilled once; its cache and last logits are repeated (``jnp.repeat``) for the samples.
    Randomness: row ``r`` at step ``t`` draws with ``fold_in(fold_in(key, r), t)``, so a fixed
    key gives the same rollout whatever the sharding, and different samples of a prompt differ.

    **EOS.** A row stops at its first token in ``eos_token_ids`` (that EOS is part of the
    completion, mask 1); after it the row holds ``pad_token_id`` with mask 0 and log-prob 0.

    **Sharding.** If the parameters are sharded (``shard_model`` or a sharded load) or ``mesh``
    is given, the batch is placed with ``batch_sharding(mesh)`` over ``('data', 'fsdp')`` and the
    KV cache's heads follow the parameters' ``'tensor'`` sharding; the batch is padded with dummy
    rows to a multiple of the batch shards (and the dummy rows dropped from the result).

    Args:
      model_or_state: a :class:`~jaxalign.models.llama.CausalLM` or ``(graphdef, state)``
        from ``nnx.split``.
      prompt_ids: ``[B, P]`` int token ids, left-padded.
      prompt_mask: ``[B, P]`` 0/1, 1 on real tokens; the last column must be real in every row.
      key: a ``jax.random`` key (typed or raw) or an int seed; may be None when ``greedy``.
      max_new_tokens: ``T``, number of decode slots.
      temperature: ``T > 0``; 0 selects greedy decoding.
      top_k: keep the ``k`` most likely tokens (static).
      top_p: nucleus mass in ``(0, 1]`` (1 or None: off).
      greedy: argmax decoding (``key`` unused).
      eos_token_ids: an id or a sequence of ids that end a completion (may be empty).
      pad_token_id: the id written after a completion ends.
      num_samples: completions per prompt.
      buckets: prompt lengths are left-padded to :func:`bucket_length` so that nearby lengths
        share a compiled program (None: no bucketing). The result keeps the given ``P``.
      mesh: the device mesh (default: the parameters' mesh, if they are sharded).

    Returns:
      a :class:`Rollout` with ``N = B * num_samples`` rows.
    """
    graphdef, state = _split(model_or_state)
    ids, mask = checked_prompts(prompt_ids, prompt_mask)
    eos_ids = eos_tuple(eos_token_ids)
    spec, temperature = sampling_spec(max_new_tokens=max_new_tokens, num_samples=num_samples,
                                      temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                                      n_eos=len(eos_ids))
    b, p = ids.shape
    width = prompt_bucket_length(p, buckets)
    mesh = mesh if mesh is not None else _mesh_of(state)
    shards = 1 if mesh is None else shd.batch_shards(mesh)
    ids_p, mask_p, valid = sampler_inputs(ids, mask, width, shards, pad_token_id)
    rows = len(valid)

    args = (jnp.asarray(ids_p), jnp.asarray(mask_p), jnp.asarray(valid))
    if mesh is not None:
        bs1, bs2 = shd.batch_sharding(mesh, 1), shd.batch_sharding(mesh, 2)
        args = (jax.device_put(args[0], bs2), jax.device_put(args[1], bs2),
                jax.device_put(args[2], bs1))
    out = _generate_jit(graphdef, state, *args, as_key(key, spec.greedy),
                        jnp.float32(temperature), jnp.float32(top_p if spec.use_top_p else 1.0),
                        jnp.asarray(eos_ids, jnp.int32).reshape(-1), jnp.int32(pad_token_id),
                        spec=spec, mesh=mesh)
    tokens, attention_mask, completion_mask, lps, lengths, finished = out
    n = b * spec.num_samples
    cut = width - p
    if rows != b:
        tokens, attention_mask, completion_mask = tokens[:n], attention_mask[:n], completion_mask[:n]
        lps, lengths, finished = lps[:n], lengths[:n], finished[:n]
    if cut:
        tokens, attention_mask, completion_mask = (x[:, cut:] for x in (tokens, attention_mask, completion_mask))
    return Rollout(tokens=tokens, attention_mask=attention_mask, completion_mask=completion_mask,
                   logprobs=lps, lengths=lengths, finished=finished, prompt_length=p)


def lower_generate(graphdef, state, prompt_shape: tuple[int, int], *, max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   greedy: bool = False, n_eos: int = 1, num_samples: int = 1,
                   buckets: Sequence[int] | None = DEFAULT_BUCKETS, mesh=None):
    """:func:`generate`'s jitted program for a ``[B, P]`` prompt batch, lowered on abstract
    arguments (``state`` may be ShapeDtypeStructs with shardings): nothing runs or is
    allocated; ``.compile().memory_analysis()`` gives the sampler's memory (prefill, the KV
    cache of ``B * num_samples`` rows of ``bucket(P) + max_new_tokens`` positions, decode)."""
    spec, _ = sampling_spec(max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature,
                            top_k=top_k, top_p=top_p, greedy=greedy, n_eos=n_eos)
    b, p = prompt_shape
    width = prompt_bucket_length(p, buckets)
    mesh = mesh if mesh is not None else _mesh_of(state)
    rows = padded_rows(b, 1 if mesh is None else shd.batch_shards(mesh))

    def arg(shape, dtype):
        s = None if mesh is None else shd.batch_sharding(mesh, len(shape))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return _generate_jit.lower(graphdef, state, arg((rows, width), jnp.int32), arg((rows, width), jnp.int32),
                               arg((rows,), jnp.bool_), key, scalar, scalar,
                               jax.ShapeDtypeStruct((n_eos,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32),
                               spec=spec, mesh=mesh)
