"""Offline DPO and its variants (ALGORITHMS.md §3) on preference data.

``jaxalign dpo --config configs/dpo_tiny.yaml``; the ``dpo:`` section is :class:`Config`.

One forward pass of the policy over the concatenated ``[chosen; rejected]`` batch ``[2B, S]``
(as TRL does) gives the sequence log-probs summed over completion tokens; the reference's come
from a frozen model (``reference: model``, one more forward without gradients) or from the
batch (``reference: precomputed``: one pass over the data before training, after which no
reference model is kept). The loss is :func:`jaxalign.losses.dpo_loss`; its weight is the
number of pairs.
"""

from __future__ import annotations

import gc

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import parallel as shd
from jaxalign.algorithms import common, data_setup, lora
from jaxalign.algorithms.sft import completion_logps
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.losses import dpo_loss, sequence_logprobs
from jaxalign.losses.dpo import BCOState
from jaxalign.losses.segments import segment_counts, segment_sums
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.algorithms.sections.dpo import (  # noqa: F401 (re-exported)
    Config, LossConfig, REFERENCES, REFERENCE_FREE_TYPES, REF_KEYS)


def pair_logps(model, batch: dict, *, chunk_size: int | None = None, remat: bool | str = False):
    """One forward over ``[chosen; rejected]`` (``[2B, S]``): ``(chosen_logps, rejected_logps,
    chosen_lengths, rejected_lengths)``, each ``[B]``, log-probs summed over completion tokens.

    A packed batch (``segment_ids``, ``pair_valid [R, K]``; :mod:`jaxalign.data.packing`) is one
    forward over its rows, pair ``j`` of a row being segments ``2j + 1`` (chosen) and ``2j + 2``
    (rejected); the four arrays are then ``[R·K]``, one entry per pair slot (empty slots give 0:
    mask them with :func:`pair_valid`)."""
    if "segment_ids" in batch:
        logps, mask = completion_logps(model, batch, remat=remat, chunk_size=chunk_size)
        k = batch["pair_valid"].shape[-1]
        seq = segment_sums(logps, mask, batch["segment_ids"], 2 * k)
        lengths = segment_counts(mask, batch["segment_ids"], 2 * k)
        return (seq[:, 0::2].reshape(-1), seq[:, 1::2].reshape(-1),
                lengths[:, 0::2].reshape(-1), lengths[:, 1::2].reshape(-1))
    cat = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
           for k in ("input_ids", "attention_mask", "completion_mask")}
    logps, mask = completion_logps(model, cat, remat=remat, chunk_size=chunk_size)
    seq = sequence_logprobs(logps, mask)
    lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)
    b = batch["chosen_input_ids"].shape[0]
    return seq[:b], seq[b:], lengths[:b], lengths[b:]


def pair_valid(batch: dict):
    """``[R·K]`` bool: which pair slots of a packed batch hold a pair; None unpacked."""
    return batch["pair_valid"].reshape(-1).astype(bool) if "pair_valid" in batch else None


def loss_kwargs(algo: Config) -> dict:
    """The :func:`dpo_loss` options of a ``dpo:`` section."""
    return dict(beta=algo.beta, loss_type=algo.loss_types(),
                loss_weights=None if algo.loss_weights is None else tuple(float(w) for w in algo.loss_weights),
                label_smoothing=algo.label_smoothing, reference_free=algo.reference_free,
                simpo_gamma=algo.simpo_gamma, discopop_tau=algo.discopop_tau, rpo_alpha=algo.rpo_alpha)


def initial_extras(algo: Config) -> dict:
    """Checkpointed state of the loss: the BCO running reward mean (``bco_pair``), else empty."""
    if "bco_pair" in algo.loss_types():
        return {"bco_mean": jnp.zeros((), jnp.float32), "bco_count": jnp.zeros((), jnp.float32)}
    return {}


def make_loss(graphdef, algo: Config, ref_graphdef=None, remat: bool | str = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` for the shared train step.

    The reference log-probs come from ``frozen`` (reference params, merged with ``ref_graphdef``)
    when it is not None, else from ``batch["ref_chosen_logp"]`` / ``batch["ref_rejected_logp"]``
    when present, else there is no reference (reference-free losses).
    """
    kwargs = loss_kwargs(algo)

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        pw, pl, len_w, len_l = pair_logps(model, batch, chunk_size=algo.chunk_size, remat=remat)
        if frozen is not None:
            ref = nnx.merge(ref_graphdef if ref_graphdef is not None else graphdef,
                            jax.lax.stop_gradient(frozen))
            rw, rl, _, _ = pair_logps(ref, batch, chunk_size=algo.chunk_size)
        elif REF_KEYS[0] in batch:
            rw, rl = batch[REF_KEYS[0]].reshape(-1), batch[REF_KEYS[1]].reshape(-1)  # [R, K] when packed
        else:
            rw = rl = None
        bco = BCOState(extras["bco_mean"], extras["bco_count"]) if "bco_mean" in extras else None
        valid = pair_valid(batch)
        loss, m = dpo_loss(pw, pl, rw, rl, chosen_lengths=len_w, rejected_lengths=len_l,
                           bco_state=bco, valid=valid, **kwargs)
        new_extras = extras
        state = m.pop("bco_state", None)
        if state is not None:
            new_extras = {"bco_mean": state.mean, "bco_count": state.count}
        metrics = dict(m, accuracy=m["rewards/accuracies"])
        if "bco_mean" in new_extras:
            metrics["bco/delta"] = new_extras["bco_mean"]
        pairs = jnp.float32(pw.shape[0]) if valid is None else jnp.sum(valid).astype(jnp.float32)
        return loss, (pairs, metrics, new_extras)

    return loss_fn


def _pass_size(cfg: RunConfig) -> int:
    return cfg.train.micro_batch_size or cfg.train.batch_size


def precompute_reference(examples: list, model, cfg: RunConfig, pad_id: int, mesh) -> list:
    """Copies of the preference ``examples`` with ``ref_chosen_logp`` / ``ref_rejected_logp``
    (floats) from ``model``: one pass in batches of the micro-batch size, in order."""
    from jaxalign.data import full_batches
    from jaxalign.parallel.distributed import to_host

    if not examples:
        return []
    graphdef, params = nnx.split(model)
    algo = cfg.algo

    @jax.jit
    def logps(params, batch):  # params are an argument, not a constant held by the executable
        return pair_logps(nnx.merge(graphdef, params), batch, chunk_size=algo.chunk_size)[:2]

    bs = min(_pass_size(cfg), len(examples))
    out_w, out_l = [], []
    for _, batch, n in full_batches(examples, bs, pad_id, cfg.data.buckets, max_length=cfg.data.max_length):
        # Every process collates the same whole batch; to_host gathers the shards of the others.
        w, l = to_host(logps(params, jax.device_put(batch, shd.batch_shardings(batch, mesh))))
        out_w.extend(np.asarray(w[:n], np.float64).tolist())
        out_l.extend(np.asarray(l[:n], np.float64).tolist())
    return [dict(e, ref_chosen_logp=w, ref_rejected_logp=l) for e, w, l in zip(examples, out_w, out_l)]


def _reference_model(cfg: RunConfig, mesh, section: str = "dpo"):
    """The model at ``<section>.reference_path``, in the policy's dtypes and on its mesh."""
    from jaxalign.io.load import load_model

    spec = cfg.model
    try:
        return load_model(cfg.algo.reference_path, dtype=spec.param_dtype, compute_dtype=spec.dtype, mesh=mesh)
    except JaxalignError as e:
        raise JaxalignError(f"config key '{section}.reference_path': {e}") from None


def _check_vocab(cfg: RunConfig, ref_vocab: int, policy_vocab: int, section: str = "dpo") -> None:
    if ref_vocab != policy_vocab:
        raise JaxalignError(f"config key '{section}.reference_path': {cfg.algo.reference_path} has a vocabulary of "
                            f"{ref_vocab} tokens, the policy {policy_vocab}; they must match")


def build_job(cfg: RunConfig) -> Job:
    """Tokenizer, data, reference, model and optimizer for a DPO run."""
    algo: Config = cfg.algo
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("preference",))
    mode = algo.reference_mode()
    model = ref_graphdef = frozen = ref_vocab = None
    if mode == "precomputed":
        if algo.reference_path:
            # Load, score every pair, drop: the policy is created only afterwards, so the peak
            # is one model, and nothing keeps the reference alive past this block.
            ref = _reference_model(cfg, mesh)
            ref_vocab = ref.config.vocab_size
            if ref_vocab < len(tok):
                _check_vocab(cfg, ref_vocab, len(tok))
            train = precompute_reference(train, ref, cfg, tok.pad_token_id, mesh)
            ev = precompute_reference(ev, ref, cfg, tok.pad_token_id, mesh)
            del ref
            gc.collect()
            model = common.model_from(cfg, mesh, tok)
        else:
            model = common.model_from(cfg, mesh, tok)  # the policy's own start is the reference
            train = precompute_reference(train, model, cfg, tok.pad_token_id, mesh)
            ev = precompute_reference(ev, model, cfg, tok.pad_token_id, mesh)
        common.say(cfg, f"dpo: reference log-probs precomputed for {len(train) + len(ev)} pairs")
    model = model if model is not None else common.model_from(cfg, mesh, tok)
    vocab = model.config.vocab_size
    graphdef, params = nnx.split(model)
    del model
    if ref_vocab is not None:
        _check_vocab(cfg, ref_vocab, vocab)
    if mode == "model":
        if algo.reference_path:
            ref = _reference_model(cfg, mesh)
            _check_vocab(cfg, ref.config.vocab_size, vocab)
            ref_graphdef, frozen = nnx.split(ref)
            del ref
        else:
            ref_graphdef, frozen = lora.reference(graphdef, params)  # LoRA: the base, no copy
    batches, eval_batches = data_setup.batch_iterators(cfg, train, ev, tok.pad_token_id)
    total = common.num_steps(cfg, len(train), batches)
    tx, schedule = make_optimizer(cfg.optim, total)
    loss_fn = make_loss(graphdef, algo, ref_graphdef, cfg.model.remat)
    return Job(params=params, loss_fn=loss_fn, eval_loss_fn=make_loss(graphdef, algo, ref_graphdef),
               tx=tx, schedule=schedule, total_steps=total, train_batches=batches,
               eval_batches=eval_batches, mesh=mesh, frozen=frozen, extras=initial_extras(algo),
               count_tokens=data_setup.real_tokens, export=common.lm_exporter(graphdef, tok, cfg.model.path),
               n_micro=common.micro_batches(cfg))

