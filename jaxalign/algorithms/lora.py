"""``model.lora``: train LoRA adapters on a frozen base, for any algorithm whose job uses the
shared train step (README: LoRA).

:func:`adapt` gives the policy its adapters (:mod:`jaxalign.models.lora`; from a PEFT adapter
with ``model.lora.adapter``); the algorithm builds its job as usual on the full state, and
:func:`lora_job` then makes only the adapters trainable: the job's ``params`` (hence the
optimizer state and the checkpoints) are the adapters, and the frozen base travels in
``frozen`` next to the algorithm's own frozen inputs. A reference model is the base with the
adapters switched off (:func:`reference`): the same arrays, no second copy of the weights.
"""

from __future__ import annotations

import dataclasses

from jaxalign.errors import JaxalignError

# Algorithms whose job runs the shared one-update step on the policy's params alone.
SUPPORTED = ("sft", "dpo", "kto", "ift")


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
            load_peft(model, spec.adapter)
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


def _on_full(fn, ref_is_base: bool = False):
    """A loss over the full state, as a loss over the adapters with ``frozen = (base, frozen)``;
    ``ref_is_base``: the algorithm's frozen input is the base itself, passed once as ``(base, None)``
    (one argument buffer per weight: the compiled step and its memory estimate hold the base once)."""
    if fn is None:
        return None
    from jaxalign.models.lora import join_params

    def loss_fn(adapters, batch, frozen, rng, extras):
        base, inner = frozen
        return fn(join_params(base, adapters), batch, base if ref_is_base else inner, rng, extras)

    return loss_fn


def _with_dropout(loss_fn, rate: float):
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
    if inner is None and getattr(job, "_lora_ref_is_base", False):
        line += f"; the reference is the base with adapters off: no copy ({fmt_bytes(per_device_bytes(base))} saved)"
    return line


def lora_job(job, cfg):
    """``job`` (built on the full state of a model with adapters) training the adapters only."""
    from jaxalign.models.lora import has_lora, join_params, split_params

    if job.step_fn is not None or job.experience is not None:
        raise JaxalignError(f"config key 'model.lora': not supported for {cfg.algorithm} yet")
    if not has_lora(job.params):
        raise JaxalignError(f"config key 'model.lora': {cfg.algorithm} built a model without adapters")
    adapters, base = split_params(job.params)
    export = job.export

    def export_lora(params, out_dir):
        # common.lm_exporter writes the merged model and, beside it, the adapter alone (adapter/).
        export(join_params(base, params), out_dir)

    same = _is_base(job.frozen, base)
    # The training loss drops adapter inputs (model.lora.dropout); evaluation never does, so it
    # keeps the undropped loss even where the algorithm evaluates with its training loss.
    out = dataclasses.replace(job, params=adapters, frozen=(base, None if same else job.frozen),
                              loss_fn=_with_dropout(_on_full(job.loss_fn, same), cfg.model.lora.dropout),
                              eval_loss_fn=_on_full(job.eval_loss_fn or job.loss_fn, same),
                              export=None if export is None else export_lora)
    out._lora_ref_is_base = same  # for plan_note
    return out
