"""What every algorithm needs from a run config: mesh, tokenizer, model(s), step count, export."""

from __future__ import annotations

import math
from pathlib import Path

import flax.nnx as nnx
import jax

from jaxalign import parallel as shd
from jaxalign.algorithms import lora
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from jaxalign.train.state import frozen_copy  # noqa: F401  (here since wave 1; lora.reference uses it too)


def mesh_from(cfg: RunConfig):
    """The run's mesh (``mesh:`` section), see :func:`jaxalign.parallel.mesh_for`."""
    return shd.mesh_for(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def tokenizer_from(cfg: RunConfig):
    """The tokenizer named by ``model.tokenizer`` (default: ``model.path``), with the chat template
    of ``data.chat_template`` when set (so every algorithm renders chat with it)."""
    from jaxalign.io.load import load_tokenizer

    src = cfg.model.tokenizer or cfg.model.path
    key = "model.tokenizer" if cfg.model.tokenizer else "model.path"
    if src is None:
        raise JaxalignError("config key 'model.tokenizer': required when model.path is not set")
    if src == "tiny":
        from jaxalign.data import tiny_tokenizer_path

        src = str(tiny_tokenizer_path())
    try:
        tok = load_tokenizer(src)
    except JaxalignError as e:
        raise JaxalignError(f"config key {key!r}: {e}") from None
    if cfg.data.chat_template:
        from jaxalign.io.tokenizer import set_chat_template

        set_chat_template(tok, cfg.data.chat_template, "data.chat_template")
    if tok.pad_token_id is None:
        # Masks come from lengths, so reusing EOS as the pad id is safe here.
        tok.pad_token = tok.eos_token
    return tok


def model_from(cfg: RunConfig, mesh, tokenizer=None, seed_offset: int = 0):
    """The policy: pretrained (``model.path``) or random (``model.init: random`` + ``model.config``).

    Parameters live in ``model.param_dtype`` (master weights); matmuls run in ``model.dtype``.
    """
    from jaxalign.io.load import load_model
    from jaxalign.models.llama import CausalLM

    from jaxalign.models.abstract import active

    spec = cfg.model
    if spec.init == "pretrained":
        if spec.path is None:
            raise JaxalignError("config key 'model.path': required when model.init is 'pretrained'")
        if active() is not None:  # jaxalign plan: the shapes from config.json, no weights read
            return _abstract_model(cfg, _config_of(spec), mesh, tokenizer)
        try:
            model = load_model(spec.path, dtype=spec.param_dtype, compute_dtype=spec.dtype, mesh=mesh)
        except JaxalignError as e:
            raise JaxalignError(f"config key 'model.path': {e}") from None
        check_positions(cfg, model.config, "model.path")
        if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
            raise JaxalignError(f"config key 'model.tokenizer': the tokenizer has {len(tokenizer)} tokens but the "
                                f"model's vocabulary only {model.config.vocab_size}; use the model's own tokenizer")
        return lora.adapt(cfg, model, mesh)
    if spec.init != "random":
        raise JaxalignError(f"config key 'model.init': expected 'pretrained' or 'random', got {spec.init!r}")
    fields = dict(spec.config or {})
    if "vocab_size" not in fields:
        if tokenizer is None:
            raise JaxalignError("config key 'model.config.vocab_size': required without a tokenizer")
        fields["vocab_size"] = len(tokenizer)
    fields.setdefault("head_dim", fields.get("hidden_size", 0) // max(fields.get("num_attention_heads", 1), 1))
    fields.setdefault("num_key_value_heads", fields.get("num_attention_heads"))
    fields.setdefault("intermediate_size", 4 * fields.get("hidden_size", 0))
    if tokenizer is not None and fields["vocab_size"] < len(tokenizer):
        raise JaxalignError(f"config key 'model.config.vocab_size': {fields['vocab_size']} is smaller than the "
                            f"tokenizer's {len(tokenizer)} tokens (leave it out to use the tokenizer's size)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = fields.get(name)
        for i in ids if isinstance(ids, (list, tuple)) else [ids]:
            if i is not None and not 0 <= i < fields["vocab_size"]:
                raise JaxalignError(f"config key 'model.config.{name}': {i} is outside the vocabulary "
                                    f"(vocab_size {fields['vocab_size']})")
    if tokenizer is not None:
        fields.setdefault("eos_token_id", tokenizer.eos_token_id)
        fields.setdefault("pad_token_id", tokenizer.pad_token_id)
        fields.setdefault("bos_token_id", tokenizer.bos_token_id)
    try:
        mc = ModelConfig(**fields, dtype=spec.dtype, param_dtype=spec.param_dtype)
    except TypeError as e:
        raise JaxalignError(f"config key 'model.config': {e}") from None
    check_positions(cfg, mc, "model.config.max_position_embeddings")
    if active() is not None:
        return _abstract_model(cfg, mc, mesh, tokenizer)
    abstract = nnx.eval_shape(lambda: CausalLM(mc, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = shd.state_shardings(abstract_state, mesh)
    # Initialise directly onto the shardings: no device ever holds the full random model.
    state = jax.jit(lambda: nnx.state(CausalLM(mc, rngs=nnx.Rngs(cfg.seed + seed_offset))),
                    out_shardings=shardings)()
    return lora.adapt(cfg, nnx.merge(graphdef, state), mesh)


def _config_of(spec) -> ModelConfig:
    """The :class:`ModelConfig` of ``model.path`` without its weights (``config.json`` or a
    GGUF header: a directory with no weights is enough to plan)."""
    from jaxalign.io.load import load_model_config

    try:
        return load_model_config(spec.path, dtype=spec.param_dtype, compute_dtype=spec.dtype)
    except JaxalignError as e:
        raise JaxalignError(f"config key 'model.path': {e} (to plan without a model on disk: model.init: random "
                            "with model.config)") from None


def _abstract_model(cfg: RunConfig, mc: ModelConfig, mesh, tokenizer=None):
    """The policy (with ``model.lora``'s adapters) as ShapeDtypeStructs on their shardings:
    nothing allocated (:mod:`jaxalign.models.abstract`)."""
    import copy
    import dataclasses

    from jaxalign.models.abstract import with_shardings
    from jaxalign.models.llama import CausalLM

    check_positions(cfg, mc, "model.path")
    if tokenizer is not None and len(tokenizer) > mc.vocab_size:
        raise JaxalignError(f"config key 'model.tokenizer': the tokenizer has {len(tokenizer)} tokens but the "
                            f"model's vocabulary only {mc.vocab_size}")
    plan_cfg = cfg
    if cfg.model.lora is not None and cfg.model.lora.adapter:  # its shape only: rank and targets
        from jaxalign.io.peft import read_peft_config

        pc = read_peft_config(cfg.model.lora.adapter)
        lora_spec = dataclasses.replace(cfg.model.lora, adapter=None, rank=int(pc["r"]),
                                        alpha=float(pc["lora_alpha"]), targets=list(pc["target_modules"]))
        plan_cfg = copy.copy(cfg)
        plan_cfg.model = dataclasses.replace(cfg.model, lora=lora_spec)
    model = nnx.eval_shape(lambda: lora.adapt(plan_cfg, CausalLM(mc, rngs=nnx.Rngs(0)), None))
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, with_shardings(state, shd.state_shardings(state, mesh)))


def check_positions(cfg: RunConfig, mc: ModelConfig, where: str) -> None:
    """``data.max_length`` must fit the model's ``max_position_embeddings``: RoPE computes any
    position, so a longer sequence would run, but on positions the model was never trained on."""
    limit = getattr(mc, "max_position_embeddings", None)
    if limit is not None and cfg.data.max_length > limit:
        raise JaxalignError(f"config key 'data.max_length': {cfg.data.max_length} is more than the model's "
                            f"max_position_embeddings={limit} ({where}); lower data.max_length to {limit} or less")


def num_steps(cfg: RunConfig, n_examples: int, batches=None) -> int:
    """``train.steps`` if set, else ``train.epochs`` passes over ``n_examples`` (with
    ``data.packing``, pass the packed iterator ``batches``: an epoch is its first epoch's
    batches of packed rows)."""
    if cfg.train.steps is not None:
        if cfg.train.steps <= 0:
            raise JaxalignError(f"config key 'train.steps': must be > 0, got {cfg.train.steps}")
        return cfg.train.steps
    per_epoch = n_examples // cfg.train.batch_size
    if batches is not None and getattr(batches, "batches_per_epoch", None) is not None:
        per_epoch = batches.batches_per_epoch  # packed: rows per epoch, not examples, make the steps
    if per_epoch == 0:
        raise JaxalignError(
            f"train.batch_size={cfg.train.batch_size} is larger than the {n_examples} training examples"
        )
    return max(1, math.floor(per_epoch * cfg.train.epochs))


def micro_batches(cfg: RunConfig) -> int:
    """Number of micro-batches per step (gradient accumulation)."""
    bs, mb = cfg.train.batch_size, cfg.train.micro_batch_size
    if bs <= 0:
        raise JaxalignError(f"config key 'train.batch_size': must be > 0, got {bs}")
    if mb is None:
        mb = bs
    if mb <= 0:
        raise JaxalignError(f"config key 'train.micro_batch_size': must be > 0 (or null), got {mb}")
    if bs % mb:
        raise JaxalignError(
            f"config key 'train.micro_batch_size': {mb} does not divide train.batch_size={bs}"
        )
    return bs // mb


def lm_exporter(graphdef, tokenizer=None, base_model: str | None = None):
    """``export(params, out_dir)``: write the model (and tokenizer) in Hugging Face format; with
    LoRA adapters, merged (``W + (alpha/r) B A``), and the adapters alone in PEFT's format in
    ``out_dir/adapter`` (``base_model``: the base it was trained on)."""
    from jaxalign.io.load import save_model
    from jaxalign.io.peft import save_peft
    from jaxalign.models.lora import has_lora, merged_model

    def export(params, out_dir: Path):
        model = nnx.merge(graphdef, params)
        if has_lora(model):
            save_peft(model, Path(out_dir) / "adapter", base_model=base_model)
            model = merged_model(model)
        save_model(model, out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))

    return export


def say(cfg: RunConfig, msg: str) -> None:
    """A progress line on stderr unless the run is quiet (process 0 only, in a multi-process run)."""
    if not cfg.quiet and jax.process_index() == 0:
        import sys

        print(msg, file=sys.stderr, flush=True)
