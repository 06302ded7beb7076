"""``jaxalign info`` and ``jaxalign export``: look at a model, or write it as a Hugging Face directory."""

from __future__ import annotations

import json
import sys

from jaxalign.errors import JaxalignError


def _model_summary(model) -> dict:
    import flax.nnx as nnx
    import jax

    cfg = model.config
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    n = sum(x.size for x in leaves)
    nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
    return {
        "architecture": cfg.architecture,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "attention_heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "tied_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict or None,
        "sliding_window": cfg.sliding_window,
        # how many layers use the window (Gemma alternates sliding and global layers)
        "sliding_layers": sum(cfg.sliding_layers) if cfg.sliding_window is not None else 0,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "param_dtype": cfg.param_dtype,
        "parameters": int(n),
        "size_mib": round(nbytes / 2**20, 1),
    }


def cmd_info(args) -> int:
    from jaxalign.io.load import load_model

    info = _model_summary(load_model(args.model, dtype=args.dtype))
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            if k == "parameters":
                v = f"{v:,} ({v / 1e6:.1f}M)"
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_export(args) -> int:
    from jaxalign.io.load import load_model, load_tokenizer, save_model

    model = load_model(args.model, dtype=args.dtype)
    out = save_model(model, args.out)
    try:
        tok = load_tokenizer(args.model)
    except JaxalignError as e:
        tok = None
        print(f"note: no tokenizer exported ({e})", file=sys.stderr)
    else:
        tok.save_pretrained(str(out))
    extra = " + tokenizer" if tok is not None else ""
    print(f"wrote {out} (Hugging Face format: config.json + safetensors{extra})")
    return 0
