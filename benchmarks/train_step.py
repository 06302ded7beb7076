"""Training step time, tokens/s and peak memory: SFT and DPO on SmolLM2-135M (batch 8 x 256).

    .venv/bin/python benchmarks/train_step.py [--algorithms sft,dpo] [--steps 5] [--torch]
    python3 benchmarks/train_step.py --random --no-torch      # on a GPU box (no GGUF needed)

jaxalign: the run config ``configs/<alg>_smollm2.yaml`` turned into a job by the algorithm's own
``build_job`` (the exact loss and train step ``jaxalign <alg>`` runs: one jitted step, AdamW,
global-norm clipping), fed fixed synthetic batches of the benchmark shape so that every step has
the same shape (a prompt of 128 tokens, a completion of 128; DPO: chosen and rejected each 256).
"first step" is the first call (trace + compile + run), reported apart from the median of the
following ``--steps`` steps. Peak memory: on a GPU, the device's ``peak_bytes_in_use``; on a CPU,
the process's peak resident set (model, optimizer state, activations and the Python runtime).

``--torch``: the same step in eager PyTorch with transformers (AdamW, completion-token NLL; DPO:
policy forward+backward on chosen and rejected concatenated, reference forward without grad),
as a baseline on the same machine. Each implementation runs in its own subprocess.
Writes benchmarks/results/train_step.json (or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import (REMAT_CHOICES, ROOT, cpu_seconds, emit_result, machine_info, peak_rss_gib, remat_arg, rss_gib, run_child,
                     write_json)

VOCAB = 49152


def synthetic_batch(alg: str, batch: int, seq: int, seed: int = 0, vocab: int = VOCAB) -> dict:
    """Fixed-shape token batch: prompt = first half, completion = second half, no padding."""
    rng = np.random.default_rng(seed)
    half = seq // 2

    def side():
        ids = rng.integers(4, vocab, (batch, seq)).astype(np.int32)
        comp = np.zeros((batch, seq), np.int32)
        comp[:, half:] = 1
        return ids, np.ones((batch, seq), np.int32), comp

    if alg in ("sft", "ift"):
        ids, attn, comp = side()
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}
    out = {}
    for name in ("chosen", "rejected"):
        ids, attn, comp = side()
        out.update({f"{name}_input_ids": ids, f"{name}_attention_mask": attn, f"{name}_completion_mask": comp})
    out["rejected_input_ids"][:, :half] = out["chosen_input_ids"][:, :half]  # shared prompt
    return out


def _compile_listener(sink: list, events: dict | None = None):
    """Register a jax.monitoring listener: backend compile durations to ``sink``; with ``events``,
    the seconds of every ``/jax/core/compile/*`` event (tracing, lowering, compiling) by name."""
    import jax

    def listen(event, secs, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            sink.append(secs)
        if events is not None and event.startswith("/jax/core/compile/"):
            name = event.rsplit("/", 1)[1]
            events[name] = events.get(name, 0.0) + secs

    jax.monitoring.register_event_duration_secs_listener(listen)


def random_model_overrides(model_config: dict) -> list[str]:
    """Config overrides that make a run's model a random one of ``model_config``'s shape (with the
    tiny tokenizer, so that no files are needed)."""
    return ["model.init=random", "model.path=null", "model.tokenizer=tiny", "model.config=" + json.dumps(model_config)]


def run_jaxalign(alg: str, batch: int = 8, seq: int = 256, steps: int = 5, dtype: str | None = None,
                 random: bool = False, remat: bool | str | None = None, lora: int = 0,
                 chunk_size: int | None = None, model_config: str | None = None) -> dict:
    """Time ``steps`` optimizer steps of ``jaxalign <alg>`` (configs/<alg>_smollm2.yaml) in this process.

    ``remat``: override ``model.remat`` (None: the config's value). ``lora``: the rank of LoRA
    adapters on all seven projections (alpha = 2 x rank, float32 base as the peers'; 0: full
    fine-tuning); the job is built as ``jaxalign <alg>`` builds it. Returns first-step time, XLA
    compile time inside it, median step, parameter count, peak RSS (or device peak) etc.
    ``chunk_size``: ``<alg>.chunk_size`` (the LM head only on completion tokens, in chunks).
    ``model_config``: a JSON model config (e.g. benchmarks/llama_1b_config.json) for the random
    model instead of SmolLM2-135M's (implies ``random``).
    """
    import jax

    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.parallel import batch_shardings
    from jaxalign.train.compile import state_shardings
    from jaxalign.train.state import TrainState, make_train_step

    compile_s: list[float] = []
    events: dict[str, float] = {}
    _compile_listener(compile_s, events)
    over = [f"train.batch_size={batch}", f"data.max_length={seq}",
            f"data.max_prompt_length={seq // 2}", "train.steps=100",
            "train.micro_batch_size=null", "data.eval_fraction=0.0", "quiet=true"]
    cfg_json = json.loads(Path(model_config or ROOT / "benchmarks" / "smollm2_135m_config.json").read_text())
    if random or model_config:
        from jaxalign.api import load_model  # noqa: F401  (same import cost as a real run)

        over += random_model_overrides(cfg_json)
    if dtype:
        over.append(f"model.dtype={dtype}")
    if remat is not None:
        over.append(f"model.remat={str(remat).lower()}")
    if chunk_size:
        over.append(f"{alg}.chunk_size={chunk_size}")
    if lora:
        from jaxalign.models.families import LORA_TARGETS

        over.append(f"model.lora={{rank: {lora}, alpha: {2 * lora}, targets: [{', '.join(LORA_TARGETS)}]}}")
    cfg = load_config(ROOT / "configs" / f"{alg}_smollm2.yaml", over, algorithm=alg)
    t0 = time.perf_counter()
    job = algorithms.build_job(cfg)
    build_s = time.perf_counter() - t0
    data = synthetic_batch(alg, batch, seq, vocab=cfg_json["vocab_size"])
    if alg == "dpo" and getattr(cfg.algo, "reference", "model") == "precomputed":
        raise SystemExit("benchmark the reference: model setting (precomputed needs the data pass)")
    state = TrainState.create(job.params, job.tx, cfg.seed, job.extras)
    state = jax.device_put(state, state_shardings(state, job.mesh, job.tx))
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule), donate_argnums=(0,))
    dev_batch = jax.device_put(data, batch_shardings(data, job.mesh))
    rss_before = rss_gib()
    compile_s.clear()
    events.clear()
    t = time.perf_counter()
    state, m = step(state, dev_batch, job.frozen)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    compiled, first_events = sum(compile_s), dict(events)
    times, cpu0 = [], cpu_seconds()
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, dev_batch, job.frozen)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    peak = (stats["peak_bytes_in_use"] / 2**30, "device") if stats else (peak_rss_gib(), "process RSS")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(job.params))
    return {"build_s": build_s, "first_step_s": first, "compile_s": compiled,
            "first_step_compile_events_s": first_events, "step_s": statistics.median(times),
            "step_times_s": times, "cpu_s_per_step": (cpu_seconds() - cpu0) / steps, "loss": float(m["loss"]),
            "peak_gib": peak[0], "peak_kind": peak[1],
            "rss_before_first_step_gib": rss_before, "device": dev.device_kind, "params": n_params,
            "remat": cfg.model.remat, "dtype": cfg.model.dtype, "lora": lora}


def load_torch_model(dtype: str = "float32"):
    """SmolLM2-135M-Instruct in transformers, from the same GGUF jaxalign loads (dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM

    from jaxalign.io.paths import resolve_model_path

    gguf = resolve_model_path("smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))


def run_torch(alg: str, batch: int = 8, seq: int = 256, steps: int = 5, remat: bool = False,
              dtype: str = "float32") -> dict:
    """The same step in eager PyTorch + transformers (AdamW, clipping; DPO: sigmoid loss, beta 0.1).

    ``remat``: gradient checkpointing of the policy (``gradient_checkpointing_enable``).
    ``dtype="bfloat16"``: mixed precision as PyTorch does it, float32 weights and optimizer with
    the forward and backward under ``torch.autocast("cpu", torch.bfloat16)`` (what TRL's
    ``bf16=True`` does on a CPU).
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    policy = load_torch_model().train()
    if remat is True:
        policy.gradient_checkpointing_enable()
    ref = load_torch_model().eval() if alg == "dpo" else None
    build_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)
    b = {k: torch.tensor(v, dtype=torch.long) for k, v in synthetic_batch(alg, batch, seq).items()}

    def seq_logps(model, ids, attn, comp):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        lp = torch.gather(F.log_softmax(logits.float(), -1), 2, ids[:, 1:, None])[..., 0]
        return lp, comp[:, 1:].float()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        return float(loss)

    def loss_fn():
        if alg == "sft":
            lp, m = seq_logps(policy, b["input_ids"], b["attention_mask"], b["completion_mask"])
            loss = -(lp * m).sum() / m.sum()
        else:
            cat = lambda k: torch.cat([b[f"chosen_{k}"], b[f"rejected_{k}"]])
            ids, attn, comp = cat("input_ids"), cat("attention_mask"), cat("completion_mask")
            lp, m = seq_logps(policy, ids, attn, comp)
            with torch.no_grad():
                rlp, _ = seq_logps(ref, ids, attn, comp)
            logr = ((lp - rlp) * m).sum(-1)
            n = batch
            loss = -F.logsigmoid(0.1 * (logr[:n] - logr[n:])).mean()
        return loss

    rss_before = rss_gib()
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    times, cpu0 = [], cpu_seconds()
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    return {"build_s": build_s, "first_step_s": first, "step_s": statistics.median(times), "step_times_s": times,
            "cpu_s_per_step": (cpu_seconds() - cpu0) / steps, "loss": loss, "peak_gib": peak_rss_gib(),
            "peak_kind": "process RSS",
            "rss_before_first_step_gib": rss_before, "device": "cpu (torch eager)",
            "params": sum(p.numel() for p in policy.parameters()), "remat": remat, "dtype": dtype}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algorithms", default="sft,dpo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default=None, help="compute dtype override (e.g. bfloat16)")
    ap.add_argument("--random", action="store_true", help="random model with SmolLM2-135M's config")
    ap.add_argument("--torch", dest="torch", action="store_true", help="also time eager PyTorch")
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="<alg>.chunk_size: the LM head only on completion tokens, in chunks")
    ap.add_argument("--remat", choices=REMAT_CHOICES, default="config",
                    help="jaxalign's model.remat: the config's value, on (true), off (false), attention or dots")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step.json"))
    ap.add_argument("--child", choices=["jaxalign", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--alg", help=argparse.SUPPRESS)
    ap.set_defaults(torch=False)
    args = ap.parse_args()
    if args.child == "jaxalign":
        remat = None if args.remat == "config" else remat_arg(args.remat)
        return emit_result(run_jaxalign(args.alg, args.batch, args.seq, args.steps, args.dtype, args.random,
                                        remat=remat, chunk_size=args.chunk_size))
    if args.child == "torch":
        return emit_result(run_torch(args.alg, args.batch, args.seq, args.steps))

    rows = []
    for alg in args.algorithms.split(","):
        for impl in ["jaxalign"] + (["torch"] if args.torch else []):
            cmd = [sys.executable, __file__, "--child", impl, "--alg", alg, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps)]
            cmd += ["--random"] if args.random else []
            cmd += ["--dtype", args.dtype] if args.dtype else []
            cmd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size and impl == "jaxalign" else []
            cmd += ["--remat", args.remat] if impl == "jaxalign" else []
            res = run_child(cmd, f"{impl} {alg}")
            res.update(implementation=impl, algorithm=alg, batch=args.batch, seq=args.seq)
            # Tokens a step processes: every token of every sequence (DPO: chosen and rejected).
            tokens = args.batch * args.seq * (2 if alg == "dpo" else 1)
            res["tokens_per_s"] = tokens / res["step_s"]
            rows.append(res)
            print(f"{impl} {alg}: step {res['step_s']:.3f}s, first {res['first_step_s']:.2f}s", file=sys.stderr)
    meta = machine_info()
    try:
        import jax

        meta["jax"] = jax.__version__
    except ImportError:
        pass
    write_json(args.out, {"meta": meta, "rows": rows})
    print("| implementation | algorithm | device | first step (s) | median step (s) | tokens/s | peak memory (GiB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['implementation']} | {r['algorithm']} | {r['device']} | {r['first_step_s']:.2f} | "
              f"{r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.2f} ({r['peak_kind']}) |")


if __name__ == "__main__":
    main()
