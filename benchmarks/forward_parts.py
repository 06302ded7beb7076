"""Where the CPU forward's time goes: decoder stack vs logits head, jaxalign vs transformers.

    .venv/bin/python benchmarks/forward_parts.py [--batch 4] [--seq 128]

A random model with SmolLM2-135M's config (benchmarks/smollm2_135m_config.json), float32, one CPU
device; best of 5 calls after a warm-up. jaxalign: the jitted full forward, ``hidden_states``
(embedding + 30 scanned decoder layers + final norm) and ``logits_from_hidden`` (the tied
[576 x 49152] head). transformers (PyTorch eager, all cores): the full ``LlamaForCausalLM``
forward and its ``model`` (decoder stack) alone. Both run in this one process, back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def best(fn, block, n=5):
    block(fn())
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        block(fn())
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp

    from jaxalign.models.config import ModelConfig
    from jaxalign.models.llama import CausalLM

    cfg = json.loads((ROOT / "benchmarks" / "smollm2_135m_config.json").read_text())
    mc = ModelConfig(**{**cfg, "rope_scaling": None})
    g, p = nnx.split(CausalLM(mc, rngs=nnx.Rngs(0)))
    ids_np = np.random.default_rng(0).integers(0, mc.vocab_size, (args.batch, args.seq))
    ids, mask = jnp.asarray(ids_np, jnp.int32), jnp.ones((args.batch, args.seq), jnp.int32)
    full = jax.jit(lambda p, i, m: nnx.merge(g, p)(i, m))
    hid = jax.jit(lambda p, i, m: nnx.merge(g, p).hidden_states(i, m))
    head = jax.jit(lambda p, h: nnx.merge(g, p).logits_from_hidden(h))
    h = hid(p, ids, mask)
    rows = {"jaxalign full": best(lambda: full(p, ids, mask), jax.block_until_ready),
            "jaxalign decoder stack": best(lambda: hid(p, ids, mask), jax.block_until_ready),
            "jaxalign logits head": best(lambda: head(p, h), jax.block_until_ready)}
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        hf = LlamaConfig(vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
                         num_hidden_layers=mc.num_hidden_layers, num_attention_heads=mc.num_attention_heads,
                         num_key_value_heads=mc.num_key_value_heads, head_dim=mc.head_dim, rope_theta=mc.rope_theta,
                         tie_word_embeddings=True, max_position_embeddings=mc.max_position_embeddings)
        m = LlamaForCausalLM(hf).eval()
        tids, tmask = torch.tensor(ids_np), torch.ones(args.batch, args.seq, dtype=torch.long)
        with torch.no_grad():
            rows["transformers full"] = best(lambda: m(input_ids=tids, attention_mask=tmask), lambda x: x)
            rows["transformers decoder stack"] = best(lambda: m.model(input_ids=tids, attention_mask=tmask),
                                                      lambda x: x)
        rows["transformers logits head (difference)"] = rows["transformers full"] - rows["transformers decoder stack"]
    tokens = args.batch * args.seq
    print(f"batch {args.batch} x {args.seq} tokens, float32; load average {os.getloadavg()[0]:.1f}")
    print("| part | ms | tokens/s |\n|---|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v * 1e3:.0f} | {tokens / v:.0f} |")


if __name__ == "__main__":
    main()
