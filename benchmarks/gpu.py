"""One prepared run of the accelerator numbers of issues 15 and 21 on a lent GPU (or TPU).

    XLA_PYTHON_CLIENT_PREALLOCATE=false python3 benchmarks/gpu.py --out DIR [--only a,b] [--quick]

Every stage runs in its own process (its own device peak), in this order, under its own time
limit; a stage that fails or runs out of time is recorded with its error and the next one runs.
``DIR/gpu.json`` is rewritten after every stage, so a run cut short keeps what it measured.

- ``matmul``: the bfloat16 GEMM peak of this device (jitted ``jnp.dot``, float32 accumulation,
  square 4096 and 8192): the denominator of MFU.
- ``sft``, ``dpo``: optimizer steps of ``jaxalign sft`` / ``jaxalign dpo`` as the CLI builds them
  (``train_step.run_jaxalign``: configs/<alg>_smollm2.yaml's loss, AdamW, clipping) on a random
  1B-class Llama (benchmarks/llama_1b_config.json: Llama-3.2-1B's shape, 1.24 B parameters),
  float32 master weights and bfloat16 compute, fixed batches ``--batch`` x ``--seq`` (DPO:
  ``--batch`` pairs, chosen and rejected each ``--seq``). MFU = model FLOPs
  (``throughput.step_flops``: 6N + 12·L·H·Q·S per token; DPO adds the reference forward) / median
  step time / the ``matmul`` peak. ``model.remat: true`` (whole blocks recomputed).
- ``sft-dots``, ``dpo-dots``, ``sft-attention``, ``dpo-attention``: the same with
  ``model.remat: dots`` (only the matmul outputs kept; norms, activations and attention
  recomputed) or ``attention`` (only the attention scores recomputed): does the 1B step fit
  without block remat, and at what MFU.
- ``gen``: greedy generation of ``--new-tokens`` tokens with the same model in bfloat16 at
  batch 1, 16 and 64 (``generate.run_jax``; random prompt ids of 33-45 tokens).
- ``grpo``: ``jaxalign grpo`` on a random model of SmolLM2-135M's shape
  (configs/grpo_smollm2.yaml with bfloat16 compute, a keyword reward instead of VADER, the tiny
  tokenizer), ``--rl-steps`` iterations: the time split (generate / score / train) from its
  metrics.jsonl, generation tokens/s, and the device's measured peak (``memory_stats()`` in the
  process that ran it: ``cli_device_peak.py``) vs ``jaxalign plan --json``'s predicted peak.
- ``tiny-grpo``, ``tiny-ppo``, ``tiny-raft``, ``tiny-online-dpo``: the tiny online configs,
  ``--rl-steps`` iterations each (PPO-max without its critic warm-up), the same split and peak.
- ``real``: realistic lengths (``real_lengths``), jaxalign packed vs padded, SFT, 1B model,
  bfloat16: real tokens/s and MFU on real tokens.

``--quick``: a tiny model and sizes, a smoke run of every stage on a CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, child_env, emit_result, run_child, write_json

if str(ROOT) not in sys.path:  # this checkout's jaxalign (rl_iteration reads its registry), as the children get it
    sys.path.insert(0, str(ROOT))

LLAMA_1B = ROOT / "benchmarks" / "llama_1b_config.json"
SMOLLM2 = ROOT / "benchmarks" / "smollm2_135m_config.json"
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048,
        "tie_word_embeddings": True, "architecture": "LlamaForCausalLM"}
TINY_ALGORITHMS = ["grpo", "ppo", "raft", "online-dpo"]
# In the order of what matters most, so that a run cut short keeps the most useful part.
# The 1B steps without block remat: "<alg>-<model.remat mode>".
REMAT_STAGES = [f"{alg}-{mode}" for mode in ("dots", "attention") for alg in ("sft", "dpo")]
STAGES = ["matmul", "sft", "dpo", *REMAT_STAGES,
          "gen", "grpo", "tiny-grpo", "tiny-ppo", "real",
          "tiny-raft", "tiny-online-dpo"]


def random_model(config_path: Path, dtype: str) -> list[str]:
    """Overrides that make a config's model a random one of ``config_path``'s shape."""
    import train_step

    return train_step.random_model_overrides(json.loads(Path(config_path).read_text())) + [f"model.dtype={dtype}"]


def child(stage: str, p: dict) -> dict:
    """Run one stage in this (child) process."""
    import throughput
    import train_step

    if stage == "matmul":
        return throughput.matmul_peak("jax", p["sizes"], 5, "bfloat16")
    if stage in ("sft", "dpo"):
        return train_step.run_jaxalign(stage, p["batch"], p["seq"], p["steps"], dtype="bfloat16",
                                       model_config=p["model_config"], remat=p.get("remat"))
    if stage == "gen":
        import generate

        return generate.run_jax(p["batches"], p["new_tokens"], 3, dtype="bfloat16", buckets=(True,),
                                model_config=p["model_config"])
    if stage == "real":
        import real_sides

        return real_sides.run_jaxalign(p["kind"], p["packed"], p)
    raise SystemExit(f"unknown stage {stage!r}")


def run_stage(stage: str, p: dict, timeout: float) -> dict:
    """``child(stage, p)`` in a subprocess under ``timeout`` seconds; its result or its error."""
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", stage, "--params", json.dumps(p)]
    return {**run_child(cmd, stage, timeout=timeout, exit_on_error=False), "wall_s": time.perf_counter() - t}


def run_online(alg: str, size: str, overrides: list[str], steps: int, timeout: float, plan: bool = True) -> dict:
    """``jaxalign <alg>`` (``rl_iteration.run`` through ``cli_device_peak.py``) and, with ``plan``,
    ``jaxalign plan`` with the same overrides: time split, generation tokens/s, measured vs planned
    peak."""
    import rl_iteration

    t = time.perf_counter()
    launcher = [sys.executable, str(ROOT / "benchmarks" / "cli_device_peak.py")]
    try:
        res = rl_iteration.run(alg, steps, overrides, size, processes=1, devices=1, launcher=launcher)
    except SystemExit as e:
        return {"algorithm": alg, "size": size, "error": str(e), "wall_s": time.perf_counter() - t}
    s = res["settings"]
    rows = s["prompts_per_iteration"] * s["samples_per_prompt"]
    res["generated_tokens_per_s"] = rows * s["max_new_tokens"] / res["generate_s"] if res["generate_s"] else None
    if not plan:
        return {**res, "wall_s": time.perf_counter() - t}
    cmd = [*rl_iteration.jaxalign_command(), "plan", "--config", str(ROOT / "configs" / f"{alg}_{size}.yaml"),
           "--json", *overrides]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT,
                              timeout=max(30.0, timeout - (time.perf_counter() - t)))
        plan = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        res["plan"] = ({k: plan[k] for k in ("peak", "peak_phase", "resident", "limit", "fits")}
                       if plan else {"error": proc.stderr[-1500:]})
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        res["plan"] = {"error": repr(e)}
    res["wall_s"] = time.perf_counter() - t
    return res


def report(path: str) -> str:
    """Markdown tables of a gpu.json: train steps with MFU, generation, online iterations."""
    import throughput

    r = json.loads(Path(path).read_text())
    st, metas = r["stages"], r["meta"].get("runs", [r["meta"]])
    meta = next((m for m in metas if not m.get("quick")), metas[0])
    peak = st.get("matmul", {}).get("flops_per_s") or float("nan")  # no matmul stage: MFU nan
    config = Path(meta["model_config"])  # a path on the machine that ran it: here, the same file name
    shape = throughput.model_shape(config if config.exists() else ROOT / "benchmarks" / config.name)
    lines = ["| stage | shape | first step (s) | median step (s) | tokens/s | model TFLOP/s | MFU | device peak (GiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    b, sq = meta["batch"], meta["seq"]
    for name in ("sft", "dpo", *REMAT_STAGES):
        x, alg = st.get(name), name.split("-")[0]
        if not x or "error" in x:
            continue
        flops = throughput.step_flops(alg, shape, b, sq) / x["step_s"]
        tokens = b * sq * (2 if alg == "dpo" else 1)
        lines.append(f"| {name} | {b} x {sq}{' pairs' if alg == 'dpo' else ''} | {x['first_step_s']:.1f} | "
                     f"{x['step_s']:.3f} | {tokens / x['step_s']:,.0f} | {flops / 1e12:.0f} | "
                     f"{100 * flops / peak:.1f} % | {x['peak_gib']:.1f} |")
    for name, x in st.items():
        if name.startswith("real-") and "error" not in x:
            flops = 6 * shape["N"] * x["real_tokens_per_s"]
            lines.append(f"| {name} (real lengths) | {x['steps']} steps, {x['real_tokens']} real of "
                         f"{x['processed_tokens']} tokens | {x['warmup_s']:.1f} | {x['time_s'] / x['steps']:.3f} | "
                         f"{x['real_tokens_per_s']:,.0f} real | {flops / 1e12:.0f} (6N only) | "
                         f"{100 * flops / peak:.1f} % | {x['peak_gib']:.1f} |")
    out = ["\n".join(lines), ""]
    if "gen" in st and "cases" in st["gen"]:
        out += ["| generation batch | new tokens | XLA compile (s) | median call (s) | tokens/s |", "|---:|---:|---:|---:|---:|"]
        out += [f"| {c['batch']} | {c['new_tokens']} | {c['compile_s']:.1f} | {c['median_s']:.3f} | {c['tokens_per_s']:,.0f} |"
                for c in st["gen"]["cases"]]
        out.append("")
    online = [(k, x) for k, x in st.items() if "iteration_s" in x]
    if online:
        out += ["| online run | prompts x samples, new tokens | first iteration (s) | iteration (s) | generate | score | "
                "train | generated tokens/s | peak (GiB; device, else RSS) | plan's peak (GiB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, x in online:
            s = x["settings"]
            plan = (x.get("plan") or {}).get("peak")
            out.append(f"| {k} | {s['prompts_per_iteration']} x {s['samples_per_prompt']}, {s['max_new_tokens']} | "
                       f"{x['first_iteration_s']:.1f} | {x['iteration_s'] * 1e3:.1f} ms | {x['generate_s'] * 1e3:.1f} ms | "
                       f"{x['score_s'] * 1e3:.1f} ms | {x['train_s'] * 1e3:.1f} ms | {x['generated_tokens_per_s']:,.0f} | "
                       f"{x.get('device_peak_gib', x['peak_rss_gib']):.2f} | " + (f"{plan / 2**30:.2f} |" if plan else "— |"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="directory for gpu.json (required)")
    ap.add_argument("--only", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    ap.add_argument("--batch", type=int, default=8, help="sft rows / dpo pairs a step")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5, help="timed train steps after the first")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rl-steps", type=int, default=3, help="iterations of each online run")
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run of every stage")
    ap.add_argument("--report", metavar="GPU_JSON", help="print the Markdown tables of a gpu.json and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        emit_result(child(args.child, json.loads(args.params)))
        return 0
    if args.report:
        print(report(args.report))
        return 0
    if not args.out:
        ap.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_config, rl_model = str(LLAMA_1B), SMOLLM2
    sizes, batches, limit = [4096, 8192], [1, 16, 64], 1.0
    if args.quick:
        model_config = str(out / "tiny_config.json")
        Path(model_config).write_text(json.dumps(TINY))
        rl_model, sizes, batches, limit = Path(model_config), [256], [1, 4], 0.2
        args.batch, args.seq, args.steps, args.new_tokens, args.rl_steps = 2, 64, 2, 8, 2
    import jax

    meta = {"command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "jax": jax.__version__, "devices": [d.device_kind for d in jax.devices()],
            "model_config": model_config, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "batch": args.batch,
            "seq": args.seq, "steps": args.steps, "new_tokens": args.new_tokens, "rl_steps": args.rl_steps,
            "gen_batches": batches, "quick": args.quick}
    del jax  # the stages run in children; this process keeps no device memory beyond the query
    results: dict = {"meta": meta, "stages": {}}

    def record(name, res):
        results["stages"][name] = res
        write_json(out / "gpu.json", results)
        shown = res.get("error", "ok")[:300] if isinstance(res, dict) else "ok"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", file=sys.stderr, flush=True)

    only = args.only.split(",")
    # Activation checkpointing on: without it the 1B model's attention probabilities of all 16
    # layers ([layers, batch, heads, seq, seq] bfloat16: 32 GiB at 8 x 2048) are kept for the
    # backward pass and XLA's autotuner runs out of the H200's memory.
    train = {"batch": args.batch, "seq": args.seq, "steps": args.steps, "model_config": model_config, "remat": True}
    for stage in only:
        if stage == "matmul":
            record("matmul", run_stage("matmul", {"sizes": sizes}, 120 * limit + 30))
        elif stage in ("sft", "dpo"):
            record(stage, run_stage(stage, train, 240 * limit + 30))
        elif stage in REMAT_STAGES:
            # No block recomputation (the GPU does ~6N FLOPs a token instead of ~8N): dots keeps
            # the projections' outputs, attention also the elementwise ops' outputs.
            alg, mode = stage.split("-")
            record(stage, run_stage(alg, {**train, "remat": mode}, 240 * limit + 30))
        elif stage == "gen":
            record("gen", run_stage("gen", {"batches": batches, "new_tokens": args.new_tokens,
                                            "model_config": model_config}, 180 * limit + 30))
        elif stage == "grpo":
            over = random_model(rl_model, "bfloat16") + ["grpo.reward={kind: keyword, pattern: a, normalize: true}"]
            size = "tiny" if args.quick else "smollm2"
            record("grpo", run_online("grpo", size, over, args.rl_steps, 300 * limit + 30))
        elif stage.removeprefix("tiny-") in TINY_ALGORITHMS:
            alg = stage.removeprefix("tiny-")
            # PPO-max's critic warm-up iterations train the critic alone: none, so that every
            # timed iteration is a whole one.
            over = ["ppo.critic_warmup_steps=0"] if alg == "ppo" else []
            record(stage, run_online(alg, "tiny", over, args.rl_steps, 120 * limit + 30, plan=False))
        elif stage == "real":
            for packed in (True, False):
                p = {"kind": "sft", "packed": packed, "n": 8 if args.quick else 192, "rows": args.batch,
                     "max_length": args.seq, "seed": 0, "remat": True,
                     "overrides": random_model(Path(model_config), "bfloat16")}
                record(f"real-sft-{'packed' if packed else 'padded'}", run_stage("real", p, 240 * limit + 30))
        else:
            raise SystemExit(f"--only: unknown stage {stage!r} (expected {', '.join(STAGES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
