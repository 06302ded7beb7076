"""What every algorithm needs from a run config: mesh, tokenizer, model(s), step count, export."""

from __future__ import annotations

import math
from pathlib import Path

import flax.nnx as nnx
import jax

from jaxalign import sharding as shd
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig


def mesh_from(cfg: RunConfig):
    """The run's mesh over all devices (``mesh:`` section)."""
    return shd.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor})


def tokenizer_from(cfg: RunConfig):
    """The tokenizer named by ``model.tokenizer`` (default: ``model.path``)."""
    from jaxalign.api import load_tokenizer

    src = cfg.model.tokenizer or cfg.model.path
    if src is None:
        raise JaxalignError("config key 'model.tokenizer': required when model.path is not set")
    tok = load_tokenizer(src)
    if tok.pad_token_id is None:
        # Masks come from lengths, so reusing EOS as the pad id is safe here.
        tok.pad_token = tok.eos_token
    return tok


def model_from(cfg: RunConfig, mesh, tokenizer=None, seed_offset: int = 0):
    """The policy: pretrained (``model.path``) or random (``model.init: random`` + ``model.config``).

    Parameters live in ``model.param_dtype`` (master weights); matmuls run in ``model.dtype``.
    """
    from jaxalign.api import load_model
    from jaxalign.models.llama import CausalLM

    spec = cfg.model
    if spec.init == "pretrained":
        if spec.path is None:
            raise JaxalignError("config key 'model.path': required when model.init is 'pretrained'")
        return load_model(spec.path, dtype=spec.param_dtype, compute_dtype=spec.dtype, mesh=mesh)
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
    if tokenizer is not None:
        fields.setdefault("eos_token_id", tokenizer.eos_token_id)
        fields.setdefault("pad_token_id", tokenizer.pad_token_id)
        fields.setdefault("bos_token_id", tokenizer.bos_token_id)
    try:
        mc = ModelConfig(**fields, dtype=spec.dtype, param_dtype=spec.param_dtype)
    except TypeError as e:
        raise JaxalignError(f"config key 'model.config': {e}") from None
    abstract = nnx.eval_shape(lambda: CausalLM(mc, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = shd.state_shardings(abstract_state, mesh)
    # Initialise directly onto the shardings: no device ever holds the full random model.
    state = jax.jit(lambda: nnx.state(CausalLM(mc, rngs=nnx.Rngs(cfg.seed + seed_offset))),
                    out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def num_steps(cfg: RunConfig, n_examples: int) -> int:
    """``train.steps`` if set, else ``train.epochs`` passes over ``n_examples``."""
    if cfg.train.steps is not None:
        if cfg.train.steps <= 0:
            raise JaxalignError(f"config key 'train.steps': must be > 0, got {cfg.train.steps}")
        return cfg.train.steps
    per_epoch = n_examples // cfg.train.batch_size
    if per_epoch == 0:
        raise JaxalignError(
            f"train.batch_size={cfg.train.batch_size} is larger than the {n_examples} training examples"
        )
    return max(1, math.floor(per_epoch * cfg.train.epochs))


def micro_batches(cfg: RunConfig) -> int:
    """Number of micro-batches per step (gradient accumulation)."""
    bs, mb = cfg.train.batch_size, cfg.train.micro_batch_size or cfg.train.batch_size
    if bs % mb:
        raise JaxalignError(
            f"config key 'train.micro_batch_size': {mb} does not divide train.batch_size={bs}"
        )
    return bs // mb


def lm_exporter(graphdef, tokenizer=None):
    """``export(params, out_dir)``: write the model (and tokenizer) in Hugging Face format."""
    from jaxalign.api import save_model

    def export(params, out_dir: Path):
        save_model(nnx.merge(graphdef, params), out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))

    return export
