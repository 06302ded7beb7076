"""What each ``model.remat`` mode keeps for the backward pass, and what it costs in time.

    python3 benchmarks/attention_memory.py [--batch 4] [--seq 512] [--modes false,attention,dots,true]
        [--causal-blocks 256,0] [--steps 3] [--model-config benchmarks/smollm2_135m_config.json] [--out FILE]

A random model of the config's shape (SmolLM2-135M by default), float32, packed rows of four
examples each (segment ids, as ``data.packing``), ``jit(value_and_grad)`` of a loss on the final
hidden states (the decoder alone: the LM head's memory is another subject, see "Logits only where
the loss reads them" in docs/design-notes.md). Per mode: the compiled program's temporaries
(``memory_analysis().temp_size_in_bytes``: what the backward pass keeps, plus scratch) and the
wall time of ``--steps`` calls after the first. ``--causal-blocks``: run each mode with each of
these ``jaxalign.models.attention.CAUSAL_BLOCK`` values (queries per attention block; 0 = dense).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import ROOT, machine_info, write_json

MODES = {"false": False, "attention": "attention", "dots": "dots", "true": True}


def run(batch: int, seq: int, modes: list[str], steps: int, model_config: Path, blocks: list[int] | None = None) -> dict:
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.models.config import ModelConfig
    from jaxalign.models import attention
    from jaxalign.models.llama import init_model

    cfg = ModelConfig.from_hf_dict({"architectures": ["LlamaForCausalLM"], **json.loads(model_config.read_text())})
    graphdef, state = nnx.split(init_model(cfg))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    seg = jnp.asarray(np.repeat(np.arange(1, 5), -(-seq // 4))[None, :seq].repeat(batch, 0), jnp.int32)
    out = {"batch": batch, "seq": seq, "model_config": model_config.name, "modes": {}}
    runs = [(name, block) for block in (blocks or [attention.CAUSAL_BLOCK]) for name in modes]
    for name, block in runs:
        remat = MODES[name]
        attention.CAUSAL_BLOCK = block  # read when the step is traced, below

        def loss(state):
            h = nnx.merge(graphdef, state).hidden_states(ids, None, segment_ids=seg, remat=remat)
            return jnp.mean(h.astype(jnp.float32) ** 2)

        fn = jax.jit(jax.value_and_grad(loss))
        temp = fn.lower(state).compile().memory_analysis().temp_size_in_bytes
        jax.block_until_ready(fn(state))
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            value, grads = fn(state)
            jax.block_until_ready(grads)
            times.append(time.perf_counter() - t)
        key = name if blocks is None else f"{name}/block{block}"
        out["modes"][key] = {"temp_gib": temp / 2**30, "step_s": times, "loss": float(value), "causal_block": block}
        print(f"remat={name} causal_block={block}: temporaries {temp / 2**30:.2f} GiB, steps {', '.join(f'{t:.2f}' for t in times)} s",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--modes", default="false,attention,dots,true")
    ap.add_argument("--causal-blocks", default=None, help="comma-separated CAUSAL_BLOCK values (0: dense)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model-config", default=str(ROOT / "benchmarks" / "smollm2_135m_config.json"))
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: {bad[0]!r} is not one of {', '.join(MODES)}")
    blocks = None if args.causal_blocks is None else [int(b) for b in args.causal_blocks.split(",")]
    res = {"machine": machine_info(),
           **run(args.batch, args.seq, modes, args.steps, Path(args.model_config).resolve(), blocks)}
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
