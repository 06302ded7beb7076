"""``model.lora``: train LoRA adapters on a frozen base, for every algorithm (README: LoRA).

:func:`adapt` gives the policy its adapters (:mod:`jaxalign.models.lora`; from a PEFT adapter
with ``model.lora.adapter``); the algorithm builds its job as usual on the full state, and
:func:`lora_job` then makes only the adapters trainable: the job's ``params`` (hence the
optimizer state and the checkpoints) are the adapters, and the frozen base travels in
``frozen`` next to the algorithm's own frozen inputs. A reference model is the base with the
adapters switched off (:func:`reference`): the same arrays, no second copy of the weights.
The online algorithms, whose steps are built from the loss inside the job, do the same split
in :func:`jaxalign.algorithms.online.job` (with :func:`on_full`) and mark their job with
:class:`LoraInfo`, which :func:`lora_job` then passes through.
"""

from __future__ import annotations

import dataclasses

from jaxalign.errors import JaxalignError

# Offline ones through :func:`lora_job`; online ones (and PPO's critic) in
# :func:`jaxalign.algorithms.online.job`; rm trains its score head beside the adapters.
SUPPORTED = ("sft", "dpo", "kto", "ift", "rm", "grpo", "online-dpo", "raft", "ppo")


@dataclasses.dataclass(frozen=True)
class LoraInfo:
    """``Job.lora`` of a job whose ``params`` are LoRA adapters and ``frozen`` is ``(base, inner)``.

    ref_is_base: the loss's frozen input (a DPO-like reference) is the base with the adapters
      off, passed once as ``(base, None)`` (no copy of the weights).
    base_reference: the run has a reference and it is the base (also the reference log-probs of
      an online algorithm's experience, which the step does not see); ``plan_note`` says so.
    """

    ref_is_base: bool = False
    base_reference: bool = False


def check_supported(cfg) -> None:
    """Refuse ``model.lora`` for an algorithm it does not work with yet, before any slow work."""
    if cfg.model.lora is None:
        return
    from jaxalign.models.lora import check_spec

    check_spec(cfg.model.lora)
    if cfg.algorithm not in SUPPORTED:
        raise JaxalignError(f"config key 'model.lora': not supported for {cfg.algorithm} yet "
                            f"(supported: {', '.join(SUPPORTED)})")


def adapt(cfg, model, mesh):
    """``model`` with the adapters of ``cfg.model.lora`` (a PEFT adapter's rank, alpha, targets
    and weights when ``adapter`` is set); the model unchanged without a ``lora`` section."""
    spec = cfg.model.lora
    if spec is None:
        return model
    from jaxalign.models.lora import add_lora

    if spec.adapter:
        from jaxalign.io.peft import load_peft, read_peft_config

        try:
            pc = read_peft_config(spec.adapter)
            spec = dataclasses.replace(spec, rank=int(pc["r"]), alpha=float(pc["lora_alpha"]),
                                       targets=list(pc["target_modules"]))
            _placed(add_lora(model, spec, seed=cfg.seed), mesh)
            load_peft(model, spec.adapter, skip_head=cfg.algorithm == "rm")  # rm: its head, once built
        except JaxalignError as e:
            raise JaxalignError(f"config key 'model.lora.adapter': {e}") from None
        return model
    return _placed(add_lora(model, spec, seed=cfg.seed), mesh)


def _placed(model, mesh):
    """The adapters (new arrays) moved onto their base weight's shardings; the base, already
    placed, is left where it is (``device_put`` onto its own sharding is a no-op)."""
    if mesh is not None:
        from jaxalign.parallel.rules import shard_model

        shard_model(model, mesh)
    return model


def reference(graphdef, params):
    """``(graphdef, params)`` of a frozen reference equal to the policy's start: with adapters,
    the base model (adapters off, its arrays shared with the policy's frozen base); otherwise a
    copy of ``params`` (:func:`jaxalign.algorithms.common.frozen_copy`)."""
    from jaxalign.models.lora import base_graphdef, has_lora, split_params

    if has_lora(params):
        return base_graphdef(graphdef, params), split_params(params)[1]
    from jaxalign.train.state import frozen_copy

    return graphdef, frozen_copy(params)


def join_adapters(adapters, base):
    """The full state of a policy's ``adapters`` on its frozen ``base`` (a pytree join, no copy)."""
    from jaxalign.models.lora import join_params

    return join_params(base, adapters)


def on_full(fn, ref_is_base: bool = False, join=join_adapters):
    """A loss over the full state, as a loss over the adapters with ``frozen = (base, frozen)``;
    ``ref_is_base``: the algorithm's frozen input is the base itself, passed once as ``(base, None)``
    (one argument buffer per weight: the compiled step and its memory estimate hold the base once).
    ``join(adapters, base)``: the full trainable tree (default :func:`~jaxalign.models.lora.join_params`;
    PPO's ``{"policy", "critic"}`` tree has its own)."""
    if fn is None:
        return None

    def loss_fn(adapters, batch, frozen, rng, extras):
        base, inner = frozen
        return fn(join(adapters, base), batch, base if ref_is_base else inner, rng, extras)

    return loss_fn


def with_dropout(loss_fn, rate: float):
    """``loss_fn`` whose forwards drop the adapters' inputs with probability ``rate``
    (:mod:`jaxalign.models.lora_dropout`), from the step's key folded with a constant (NEFTune
    uses the key itself); ``loss_fn`` unchanged for rate 0."""
    if not rate or loss_fn is None:
        return loss_fn
    import jax

    from jaxalign.models import lora_dropout

    def dropped(adapters, batch, frozen, rng, extras):
        with lora_dropout.active(jax.random.fold_in(rng, 0x1D0)):
            return loss_fn(adapters, batch, frozen, rng, extras)

    return dropped


def _is_base(frozen, base) -> bool:
    import jax

    leaves, own = jax.tree.leaves(frozen), jax.tree.leaves(base)
    return bool(leaves) and len(leaves) == len(own) and all(a is b for a, b in zip(leaves, own))


def plan_note(job) -> str:
    """``jaxalign plan``'s LoRA line: trainable adapter and frozen base sizes, and the reference
    copy the shared base saves."""
    import jax

    from jaxalign.train.preflight import fmt_bytes, per_device_bytes

    base, inner = job.frozen
    n_ad = sum(x.size for x in jax.tree.leaves(job.params))
    n_base = sum(x.size for x in jax.tree.leaves(base))
    line = (f"LoRA: {n_ad:,} trainable adapter parameters ({100.0 * n_ad / max(n_base, 1):.2f}% of the "
            f"{n_base:,} frozen base ones; {fmt_bytes(per_device_bytes(base))} per device)")
    if inner is None and job.lora is not None and job.lora.base_reference:
        line += f"; the reference is the base with adapters off: no copy ({fmt_bytes(per_device_bytes(base))} saved)"
    return line


def head_filter(cfg):
    """Variables that train beside the adapters: a reward model's score head (full rank)."""
    import flax.nnx as nnx

    return nnx.PathContains("score") if cfg.algorithm == "rm" else None


def lora_job(job, cfg):
    """``job`` (built on the full state of a model with adapters) training the adapters only
    (and a reward model's score head); a job already built on the adapters (``job.lora``, the
    online algorithms') is returned as it is."""
    from jaxalign.models.lora import has_lora, join_params, split_params

    if job.lora is not None:
        return job
    if job.step_fn is not None or job.experience is not None:
        raise JaxalignError(f"config key 'model.lora': not supported for {cfg.algorithm} yet")
    if not has_lora(job.params):
        raise JaxalignError(f"config key 'model.lora': {cfg.algorithm} built a model without adapters")
    adapters, base = split_params(job.params, head_filter(cfg))
    export = job.export

    def export_lora(params, out_dir):
        # common.lm_exporter writes the merged model and, beside it, the adapter alone (adapter/).
        export(join_params(base, params), out_dir)

    same = _is_base(job.frozen, base)
    # The training loss drops adapter inputs (model.lora.dropout); evaluation never does, so it
    # keeps the undropped loss even where the algorithm evaluates with its training loss.
    return dataclasses.replace(job, params=adapters, frozen=(base, None if same else job.frozen),
                               loss_fn=with_dropout(on_full(job.loss_fn, same), cfg.model.lora.dropout),
                               eval_loss_fn=on_full(job.eval_loss_fn or job.loss_fn, same),
                               export=None if export is None else export_lora, lora=LoraInfo(same, same))
