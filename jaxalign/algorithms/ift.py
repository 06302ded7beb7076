"""Intuitive fine-tuning (IFT, Hua et al. 2024, arXiv:2405.11870; ALGORITHMS.md §8).

Each step runs the model twice: pass 1 (no gradient) on the gold sequence gives the model's own
next-token predictions ``ŷ``; pass 2 (with gradient) reads the temporal residual mix
``e = (1−λ)·E[y] + λ·E[ŷ]`` and is scored against the gold tokens with the dynamic relation
propagation weights (γ). ``jaxalign ift --config configs/ift_tiny.yaml``; the ``ift:`` section
is :class:`Config`.
"""

from __future__ import annotations


import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.algorithms import common, data_setup
from jaxalign.algorithms.sft import completion_logps, loss_weight
from jaxalign.config import RunConfig
from jaxalign.losses import ift_loss, ift_predicted_ids
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.algorithms.sections.ift import Config, SCHEDULES  # noqa: F401 (re-exported)


def lam_at(algo: Config, step, warmup_steps: int, key=None):
    """λ for update ``step`` (0-based): the schedule (a linear ramp over ``algo.lam_warmup_steps``,
    else ``warmup_steps``, then held; the reference code's ``linear_warmup``), then the optional
    jitter (needs ``key``)."""
    lam = jnp.asarray(algo.lam, jnp.float32)
    if algo.lam_schedule == "linear":
        span = algo.lam_warmup_steps if algo.lam_warmup_steps is not None else warmup_steps
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(span, 1), 0.0, 1.0) if span > 0 else 1.0
        lam = algo.lam_start + (algo.lam - algo.lam_start) * frac
    if algo.lam_noise and key is not None:
        lam = lam * (1.0 + algo.lam_noise * jax.random.normal(key, (), jnp.float32))
    return jnp.clip(lam, 0.0, 1.0)


def mixed_embeddings(model, input_ids, predicted_ids, lam, train_input_embeddings: bool = True):
    """``(1−λ)·E[y] + λ·E[ŷ]`` with no gradient through ``E[ŷ]`` (nor, when
    ``train_input_embeddings`` is false, through ``E[y]``)."""
    gold = model.embed(input_ids)
    if not train_input_embeddings:
        gold = jax.lax.stop_gradient(gold)
    pred = jax.lax.stop_gradient(model.embed(predicted_ids))
    lam = jnp.asarray(lam, gold.dtype)
    return (1 - lam) * gold + lam * pred


def initial_extras() -> dict:
    """``ift_step`` counts applied updates and drives the λ schedule (a skipped non-finite step
    does not advance it); ``ift_micro`` is the micro-batch within the step (0 between steps)."""
    return {"ift_step": jnp.zeros((), jnp.int32), "ift_micro": jnp.zeros((), jnp.int32)}


def make_loss(graphdef, algo: Config, warmup_steps: int, remat: bool | str = False, train: bool = True,
              n_micro: int = 1, seed: int = 0):
    """``loss_fn(params, batch, frozen, rng, extras)`` with :func:`initial_extras`.

    The train step threads the extras through its ``n_micro`` micro-batches in order, so the
    step counter advances once, after the last one; the jitter of λ is drawn from
    ``(seed, step)``, one draw per step for all its micro-batches (not from the per-micro-batch
    ``rng``)."""
    jitter_key = jax.random.key(seed)

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        ids, attn = batch["input_ids"], batch["attention_mask"]
        step = extras["ift_step"]
        lam = lam_at(algo, step, warmup_steps, jax.random.fold_in(jitter_key, step) if train else None)
        # Pass 1: the model's own predictions on the gold prefix (no gradient).
        logits1 = jax.lax.stop_gradient(model(ids, attn))
        pred = ift_predicted_ids(logits1, ids, batch["completion_mask"])
        # Pass 2: the residual mix, scored against the gold tokens.
        embeds = mixed_embeddings(model, ids, pred, lam, algo.train_input_embeddings)
        logps, mask = completion_logps(model, batch, embeds=embeds, remat=remat, chunk_size=algo.chunk_size)
        loss, m = ift_loss(logps, mask, gamma=algo.gamma)
        changed = jnp.sum((pred != ids) & mask) / jnp.maximum(jnp.sum(mask), 1)
        # Per-sequence mean NLL, averaged like the loss (over sequences), so the logged value
        # does not depend on train.micro_batch_size.
        n_seq_tok = jnp.sum(mask, axis=-1)
        seq_nll = -jnp.sum(jnp.where(mask, logps, 0.0), axis=-1) / jnp.maximum(n_seq_tok, 1)
        has = n_seq_tok > 0
        nll = jnp.sum(jnp.where(has, seq_nll, 0.0)) / jnp.maximum(jnp.sum(has), 1)
        metrics = {"nll": nll, "lambda": lam, "predicted_differs": changed}
        if train:
            micro = extras["ift_micro"] + 1
            done = micro >= n_micro
            new_extras = dict(extras, ift_step=jnp.where(done, step + 1, step),
                              ift_micro=jnp.where(done, 0, micro))
        else:
            new_extras = extras
        return loss, (loss_weight(mask, "sequence_mean"), metrics, new_extras)

    return loss_fn


def build_job(cfg: RunConfig) -> Job:
    """Tokenizer, data, model and optimizer for an IFT run."""
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("sft",))
    batches, eval_batches = data_setup.batch_iterators(cfg, train, ev, tok.pad_token_id)
    model = common.model_from(cfg, mesh, tok)
    graphdef, params = nnx.split(model)
    total = common.num_steps(cfg, len(train))
    tx, schedule = make_optimizer(cfg.optim, total)
    n_micro = common.micro_batches(cfg)
    warmup = cfg.optim.warmup_steps
    return Job(params=params,
               loss_fn=make_loss(graphdef, cfg.algo, warmup, cfg.model.remat, n_micro=n_micro, seed=cfg.seed),
               eval_loss_fn=make_loss(graphdef, cfg.algo, warmup, train=False),
               extras=initial_extras(), tx=tx, schedule=schedule,
               total_steps=total, train_batches=batches, eval_batches=eval_batches, mesh=mesh,
               count_tokens=data_setup.real_tokens, export=common.lm_exporter(graphdef, tok, cfg.model.path),
               n_micro=n_micro)
