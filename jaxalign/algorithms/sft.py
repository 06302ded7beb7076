"""Supervised fine-tuning: token-mean NLL on completion tokens, optional NEFTune noise.

``jaxalign sft --config configs/sft_tiny.yaml``; the ``sft:`` section is :class:`Config`.
"""

from __future__ import annotations

import dataclasses

import flax.nnx as nnx
import jax.numpy as jnp

from jaxalign.algorithms import common, data_setup
from jaxalign.algorithms.logps import completion_token_logps
from jaxalign.config import RunConfig
from jaxalign.losses import neftune_noise, nll_loss
from jaxalign.losses.segments import segment_counts, segment_starts, segment_sums
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.algorithms.sections.sft import AGGREGATIONS, Config  # noqa: F401 (re-exported)


def packed_inputs(batch: dict, prefix: str = "") -> dict:
    """The model keywords of a packed batch (:mod:`jaxalign.data.packing`): its segment ids and,
    for preference rows with shared prompts, ``prefix_ids`` and the positions; ``{}`` unpacked."""
    names = {"segment_ids": "segment_ids", "prefix_ids": "prefix_ids", "position_ids": "positions"}
    return {arg: batch[prefix + key] for key, arg in names.items() if prefix + key in batch}


def completion_logps(model, batch: dict, *, prefix: str = "", embeds=None, remat: bool | str = False,
                     chunk_size: int | None = None):
    """Per-token log-probs ``[B, S]`` of ``batch[prefix + 'input_ids']`` and the loss mask
    (completion tokens; position 0 never counts, it has no prediction).

    A packed batch (``segment_ids``, :mod:`jaxalign.data.packing`) runs with attention confined
    to each example, and no segment's first token counts either: its "prediction" would come
    from the previous example's last token.

    With ``chunk_size`` the LM head runs only where the loss reads it, ``chunk_size`` tokens
    at a time (:mod:`jaxalign.algorithms.logps`): the ``[B, S, V]``
    logits and their gradient are never all live, and log-probs outside the mask are 0.
    Without, the full head and :func:`shifted_token_logprobs` (every position's log-prob)."""
    ids, attn = batch[prefix + "input_ids"], batch[prefix + "attention_mask"]
    seg = batch.get(prefix + "segment_ids")
    packed = packed_inputs(batch, prefix)
    mask = jnp.asarray(batch[prefix + "completion_mask"], bool).at[:, 0].set(False)
    if seg is not None:
        mask &= ~segment_starts(seg)
    inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    hidden = model.hidden_states(attention_mask=attn, remat=remat, **inputs, **packed)
    return completion_token_logps(model, hidden, ids, mask, chunk_size), mask


def packed_sequence_nll(logps, mask, segment_ids):
    """SFT ``sequence_mean`` of a packed batch: each example's (segment's) mean completion NLL,
    then the mean over examples with completion tokens, as ``nll_loss`` computes it per row
    unpacked. Returns ``(loss, number of those examples)``."""
    m = logps.shape[-1]  # a row of S tokens holds at most S segments
    sums = segment_sums(-logps, mask, segment_ids, m)
    counts = segment_counts(mask, segment_ids, m)
    has = counts > 0
    per = jnp.where(has, sums / jnp.maximum(counts, 1.0), 0.0)
    n = jnp.sum(has).astype(jnp.float32)
    return jnp.sum(per) / jnp.maximum(n, 1.0), n


def loss_weight(mask, aggregation: str, segment_ids=None):
    """The units a micro-batch's mean is over: completion tokens, or sequences that have some
    (packed: segments that have some)."""
    if aggregation == "token_mean":
        return jnp.sum(mask).astype(jnp.float32)
    if segment_ids is not None:
        return jnp.sum(segment_counts(mask, segment_ids, mask.shape[-1]) > 0).astype(jnp.float32)
    return jnp.sum(jnp.any(mask, axis=-1)).astype(jnp.float32)


def make_loss(graphdef, algo: Config, remat: bool | str = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` for the shared train step."""

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        embeds = None
        if algo.neftune_alpha:
            embeds = neftune_noise(rng, model.embed(batch["input_ids"]), algo.neftune_alpha)
        logps, mask = completion_logps(model, batch, embeds=embeds, remat=remat, chunk_size=algo.chunk_size)
        seg = batch.get("segment_ids")
        if seg is not None and algo.aggregation == "sequence_mean":
            loss, _ = packed_sequence_nll(logps, mask, seg)
        else:  # token_mean: a packed batch has the same completion tokens, so the same mean
            loss, _ = nll_loss(logps, mask, aggregation=algo.aggregation)
        # "nll" in the aggregation of the loss (nll_loss's own "nll" is a token mean, which the
        # sequence-weighted accumulation of sequence_mean would make depend on micro_batch_size).
        return loss, (loss_weight(mask, algo.aggregation, seg), {"nll": loss}, extras)

    return loss_fn


def make_eval_loss(graphdef, algo: Config):
    """The same loss without NEFTune noise (noise is a training-time regulariser only)."""
    return make_loss(graphdef, dataclasses.replace(algo, neftune_alpha=None))


def build_job(cfg: RunConfig) -> Job:
    """Tokenizer, data, model and optimizer for an SFT run."""
    n_micro = common.micro_batches(cfg)  # config errors first, before any slow work
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("sft",))
    batches, eval_batches = data_setup.batch_iterators(cfg, train, ev, tok.pad_token_id)
    total = common.num_steps(cfg, len(train), batches)
    model = common.model_from(cfg, mesh, tok)
    graphdef, params = nnx.split(model)
    tx, schedule = make_optimizer(cfg.optim, total)
    return Job(params=params, loss_fn=make_loss(graphdef, cfg.algo, cfg.model.remat),
               eval_loss_fn=make_eval_loss(graphdef, cfg.algo), tx=tx, schedule=schedule,
               total_steps=total, train_batches=batches, eval_batches=eval_batches, mesh=mesh,
               count_tokens=data_setup.real_tokens, export=common.lm_exporter(graphdef, tok, cfg.model.path),
               n_micro=n_micro)
