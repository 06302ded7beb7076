"""KTO (Kahneman-Tversky optimisation; Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired
completions labelled desirable or undesirable.

``jaxalign kto --config configs/kto_tiny.yaml``; the ``kto:`` section is :class:`Config`.

Data: the ``unpaired`` format (``{"prompt", "completion", "label": true/false}``) or preference
pairs, each split into its chosen completion (desirable) and its rejected one (undesirable), as
TRL's ``unpair_preference_dataset`` does. Batches hold left-padded prompts and right-padded
completions (:mod:`jaxalign.data.batching`), so each row's sequence is ``[prompt; completion]``.

The reference point ``z₀`` (an estimate of ``KL(π‖π_ref)``) comes from mismatched pairs of the
same batch: row i's prompt with row i−1's completion (``jnp.roll`` of the completion rows by
one, row 0 taking the last row's: TRL's ``[y_n, y_1, …, y_{n−1}]``). The roll is inside the
jitted loss, over the global (micro-)batch array, so under a data-parallel mesh the pairs cross
shard boundaries exactly as on one device. ``z₀`` carries no gradient, so the policy's forward
over the mismatched pairs runs on stop-gradient parameters (no backward pass for it). The
reference is always a frozen model (the policy's starting weights or ``kto.reference_path``):
the mismatched pairs change with every shuffled batch, so their reference log-probs cannot be
computed once ahead of training as DPO's ``reference: precomputed`` does.
"""

from __future__ import annotations


import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.algorithms import common, data_setup, dpo, lora
from jaxalign.algorithms.sft import completion_logps
from jaxalign.config import RunConfig
from jaxalign.losses import kto_loss, sequence_logprobs
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.algorithms.sections.kto import Config, SECTION  # noqa: F401 (re-exported)


def sequences(batch: dict, shift: bool = False) -> dict:
    """``[prompt; completion]`` rows of an unpaired batch as ``input_ids``, ``attention_mask``
    and ``completion_mask`` ``[B, Sp + Sc]``; ``shift``: row i's prompt with row i−1's completion
    (row 0 with the last row's), the mismatched pairs of the KL reference point. A mismatched
    row can be longer than ``data.max_length`` (a long prompt with another row's long
    completion); TRL cuts such rows to ``max_length``, jaxalign keeps every completion token, so
    that a mismatched log-prob sums over the same completion as its matched one."""
    ids, attn = batch["completion_input_ids"], batch["completion_attention_mask"]
    if shift:
        ids, attn = jnp.roll(ids, 1, axis=0), jnp.roll(attn, 1, axis=0)
    p_ids, p_attn = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    return {"input_ids": jnp.concatenate([p_ids, ids], axis=1),
            "attention_mask": jnp.concatenate([p_attn, attn], axis=1),
            "completion_mask": jnp.concatenate([jnp.zeros_like(p_attn), attn], axis=1)}


def sequence_logps(model, seqs: dict, *, chunk_size: int | None = None, remat: bool | str = False):
    """``[B]`` log-probs of the completions of ``seqs`` (from :func:`sequences`), summed over tokens."""
    logps, mask = completion_logps(model, seqs, remat=remat, chunk_size=chunk_size)
    return sequence_logprobs(logps, mask)


def make_loss(graphdef, algo: Config, ref_graphdef=None, remat: bool | str = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` for the shared train step; ``frozen``
    holds the reference parameters (merged with ``ref_graphdef``, default ``graphdef``). Its
    weight is the number of rows."""
    uses_kl = algo.loss_type == "kto"

    def loss_fn(params, batch, frozen, rng, extras):
        if frozen is None:
            raise ValueError("KTO needs the reference parameters as its frozen input")
        main = sequences(batch)
        pw = sequence_logps(nnx.merge(graphdef, params), main, chunk_size=algo.chunk_size, remat=remat)
        ref = nnx.merge(ref_graphdef if ref_graphdef is not None else graphdef, jax.lax.stop_gradient(frozen))
        b = pw.shape[0]
        pk = rk = None
        if uses_kl:
            mismatched = sequences(batch, shift=True)
            # z₀ is a constant of the loss: no gradient, so no backward pass through this forward.
            pk = sequence_logps(nnx.merge(graphdef, jax.lax.stop_gradient(params)), mismatched,
                                chunk_size=algo.chunk_size)
            # One reference forward over [own pairs; mismatched pairs] ([2B, Sp + Sc]).
            both = {k: jnp.concatenate([main[k], mismatched[k]], axis=0) for k in main}
            ref_all = sequence_logps(ref, both, chunk_size=algo.chunk_size)
            rw, rk = ref_all[:b], ref_all[b:]
        else:
            rw = sequence_logps(ref, main, chunk_size=algo.chunk_size)
        loss, metrics = kto_loss(pw, rw, batch["label"], pk, rk, beta=algo.beta,
                                 desirable_weight=algo.desirable_weight,
                                 undesirable_weight=algo.undesirable_weight, loss_type=algo.loss_type)
        return loss, (jnp.float32(b), metrics, extras)

    return loss_fn


def as_unpaired(tokenized: list) -> list:
    """Tokenized examples as unpaired ones: preference pairs split in two, unpaired kept."""
    from jaxalign.data import batch_kind, unpair_preference

    if tokenized and batch_kind(tokenized[0]) == "preference":
        return unpair_preference(tokenized)
    return list(tokenized)


def _balance(cfg: RunConfig, train: list) -> None:
    n_d = sum(bool(e["label"]) for e in train)
    n_u = len(train) - n_d
    algo = cfg.algo
    if n_d == 0 or n_u == 0:
        common.say(cfg, f"kto: warning: the training data has {n_d} desirable and {n_u} undesirable rows; "
                        "KTO learns from both kinds")
        return
    ratio = algo.desirable_weight * n_d / (algo.undesirable_weight * n_u)
    hint = "" if 1.0 <= ratio <= 4.0 / 3.0 + 1e-9 else " (the paper suggests 1 to 4/3: adjust kto.desirable_weight)"
    common.say(cfg, f"kto: {n_d} desirable and {n_u} undesirable rows; "
                    f"desirable_weight*n_D / (undesirable_weight*n_U) = {ratio:.2f}{hint}")


def build_job(cfg: RunConfig) -> Job:
    """Tokenizer, data (preference pairs split into unpaired rows), reference, model and
    optimizer for a KTO run."""
    algo: Config = cfg.algo
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("unpaired", "preference"), convert=as_unpaired)
    _balance(cfg, train)
    model = common.model_from(cfg, mesh, tok)
    vocab = model.config.vocab_size
    graphdef, params = nnx.split(model)
    del model
    if algo.reference_path:
        ref = dpo._reference_model(cfg, mesh, SECTION)
        dpo._check_vocab(cfg, ref.config.vocab_size, vocab, SECTION)
        ref_graphdef, frozen = nnx.split(ref)
        del ref
    else:
        ref_graphdef, frozen = lora.reference(graphdef, params)  # LoRA: the base, no copy
    batches, eval_batches = data_setup.batch_iterators(cfg, train, ev, tok.pad_token_id)
    total = common.num_steps(cfg, len(train))
    tx, schedule = make_optimizer(cfg.optim, total)
    return Job(params=params, loss_fn=make_loss(graphdef, algo, ref_graphdef, cfg.model.remat),
               eval_loss_fn=make_loss(graphdef, algo, ref_graphdef), tx=tx, schedule=schedule,
               total_steps=total, train_batches=batches, eval_batches=eval_batches, mesh=mesh,
               frozen=frozen, extras={}, count_tokens=data_setup.real_tokens,
               export=common.lm_exporter(graphdef, tok, cfg.model.path), n_micro=common.micro_batches(cfg))
