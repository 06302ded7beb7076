"""Where a generate call's time goes: a per-op profile of jaxalign's decode (and of transformers').

    .venv/bin/python benchmarks/profile_decode.py [--dtype float32|bfloat16] [--batch 16]
        [--new-tokens 64] [--torch] [--out benchmarks/results/profile_decode_<dtype>.json]

jaxalign side: one warm ``generate`` call (greedy, SmolLM2-135M-Instruct, chat prompts as in
``generate.py``) under ``jax.profiler.trace``. XLA:CPU records every thunk it runs; the
optimized HLO (dumped at compile time) maps each thunk name (``ynn_fusion.12``, ``dot.3``, ...)
to the jaxalign operation it came from (its ``op_name`` metadata: the einsum spec of a matmul,
``dynamic_update_slice``, ``reduce_sum``, ...) and its output shape. Ops are grouped by
(operation, shape); a row's count divided by the number of decode steps tells a per-step op
(count = steps x layers) from a once-per-call one (prefill, weight casts).

``--torch``: the same call in transformers under ``torch.profiler`` (self CPU time per aten op).

The share of matmuls in each side's op time bounds what a faster runtime could gain: a decode
whose matmuls take X of its time cannot get faster than 1/X by removing everything else.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from _common import ROOT, cpu_name, write_json

_INSTR = re.compile(r"%([\w.\-]+) = (\S+) (?:fusion|dot|copy|transpose|convert)\(.*?op_name=\"([^\"]+)\"")


def hlo_ops(dump_dir: str) -> dict[str, str]:
    """Thunk name -> "operation shape" from the optimized HLO of the generate program."""
    files = glob.glob(os.path.join(dump_dir, "*generate_jit.cpu_after_optimizations.txt"))
    if not files:
        return {}
    ops = {}
    for m in _INSTR.finditer(open(files[0]).read()):
        name, shape, op = m.groups()
        parts = op.split("/")
        label = parts[-2] if parts[-1] == "dot_general" else parts[-1]
        ops[name] = f"{label} {re.sub(r'{.*}', '', shape)}"
    return ops


def is_matmul(label: str) -> bool:
    return "->" in label  # einsum specs name every matmul of the model


def jax_profile(dtype: str, batch: int, new_tokens: int) -> dict:
    """Profile one warm generate call in this process (must not have started jax yet)."""
    dump = tempfile.mkdtemp(prefix="jaxalign_decode_hlo_")
    # Read when the backend starts, so set before jax is first used.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), f"--xla_dump_to={dump}", "--xla_dump_hlo_as_text",
        "--xla_dump_hlo_module_re=.*generate.*"]))
    import jax

    from generate import encode, load
    from jaxalign.rollout import generate, pad_prompts

    model, tok, source = load(False, dtype)
    ids, mask = pad_prompts(encode(tok, batch), tok.pad_token_id if tok else 2)
    pad = tok.pad_token_id if tok else 2

    def call():
        jax.block_until_ready(generate(model, ids, mask, None, greedy=True, max_new_tokens=new_tokens,
                                       eos_token_ids=(), pad_token_id=pad))

    call()
    t = time.perf_counter()
    call()
    wall = time.perf_counter() - t
    trace_dir = tempfile.mkdtemp(prefix="jaxalign_decode_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t = time.perf_counter()
    call()
    traced_wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    trace = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))["traceEvents"]
    names = hlo_ops(dump)
    tot, cnt = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(("$", "Thunk", "Slinky", "end:", "PjitFunction",
                                                       "CommonPjRt", "DevicePut")):
            continue
        label = names.get(e["name"], re.sub(r"\.\d+$", "", e["name"]))
        tot[label] += e["dur"] / 1e6
        cnt[label] += 1
    return {"framework": "jaxalign", "model": source, "dtype": dtype, "batch": batch,
            "prompt_padded_to": int(ids.shape[1]), "new_tokens": new_tokens, "wall_s": wall,
            "traced_wall_s": traced_wall, "ops": summarize(tot, cnt)}


def torch_profile(dtype: str, batch: int, new_tokens: int) -> dict:
    import torch
    import transformers

    import jaxalign
    from generate import prompts_for
    from jaxalign.io.paths import resolve_model_path
    from jaxalign.rollout import pad_prompts
    from jaxalign.rollout.text import encode_prompts

    path = resolve_model_path("smollm2-135m-instruct")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    tok = jaxalign.load_tokenizer(path)
    ids, mask = pad_prompts(encode_prompts(tok, prompts_for(batch), chat=True), tok.pad_token_id, buckets=None)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def call():
        with torch.no_grad():
            model.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                           temperature=None, top_k=None, top_p=None)

    call()
    t = time.perf_counter()
    call()
    wall = time.perf_counter() - t
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        call()
        traced_wall = time.perf_counter() - t
    tot, cnt = {}, {}
    for e in prof.key_averages():
        tot[e.key], cnt[e.key] = e.self_cpu_time_total / 1e6, e.count
    return {"framework": "transformers", "dtype": dtype, "batch": batch, "prompt_padded_to": int(ids.shape[1]),
            "new_tokens": new_tokens, "wall_s": wall, "traced_wall_s": traced_wall,
            "ops": summarize(tot, cnt, matmul=lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm"))}


def summarize(tot: dict, cnt: dict, matmul=is_matmul) -> dict:
    total = sum(tot.values())
    rows = [{"op": k, "seconds": v, "share": v / total, "count": cnt[k]}
            for k, v in sorted(tot.items(), key=lambda kv: -kv[1])]
    mm = sum(r["seconds"] for r in rows if matmul(r["op"]))
    return {"total_s": total, "matmul_s": mm, "matmul_share": mm / total if total else 0.0, "rows": rows}


def report(res: dict, top: int) -> str:
    ops = res["ops"]
    out = [f"{res['framework']} {res['dtype']}, batch {res['batch']}, prompt {res['prompt_padded_to']}, "
           f"{res['new_tokens']} new tokens: {res['wall_s']:.2f} s per call "
           f"({res['batch'] * res['new_tokens'] / res['wall_s']:.1f} tok/s; traced call {res['traced_wall_s']:.2f} s)",
           f"op time {ops['total_s']:.2f} s, of which matmuls {ops['matmul_s']:.2f} s "
           f"({100 * ops['matmul_share']:.1f} %)", "",
           "| op (output shape) | s | share | count |", "|---|---:|---:|---:|"]
    for r in ops["rows"][:top]:
        out.append(f"| `{r['op'][:80]}` | {r['seconds']:.3f} | {100 * r['share']:.1f} % | {r['count']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--torch", action="store_true", help="also profile transformers generate")
    ap.add_argument("--top", type=int, default=20, help="rows to print per side")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or str(ROOT / "benchmarks" / "results" / f"profile_decode_{args.dtype}.json")
    results = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
               "command": "python benchmarks/profile_decode.py " + " ".join(sys.argv[1:]),
               "jaxalign": jax_profile(args.dtype, args.batch, args.new_tokens)}
    if args.torch:
        results["transformers"] = torch_profile(args.dtype, args.batch, args.new_tokens)
    results["machine"]["load_average_after"] = os.getloadavg()
    write_json(out, results)
    for side in ("jaxalign", "transformers"):
        if side in results:
            print(report(results[side], args.top) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
