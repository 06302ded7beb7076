"""Per-iteration time split (generate / score / train) of the online algorithms on SmolLM2-135M.

    .venv/bin/python benchmarks/rl_iteration.py [--algorithms ppo,raft] [--steps 4] [key=value ...]

Runs ``jaxalign <alg> --config configs/<alg>_smollm2.yaml`` for ``--steps`` iterations in a
subprocess (no eval, no checkpoints, no export) and reads its ``metrics.jsonl``: ``time/generate``
(sampling, one jitted call), ``time/score`` (decode + reward + reference log-probs) and the whole
iteration (``step_time``); "train" is the rest. Iteration 1 (compilation) is reported apart; the
table gives the median of the following iterations. Extra ``key=value`` overrides go to every run.
Writes benchmarks/results/rl_iteration.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(alg: str, steps: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(Path(sys.executable).parent / "jaxalign"), alg, "--config", str(ROOT / "configs" / f"{alg}_smollm2.yaml"),
               "--run-dir", d, "--quiet", f"train.steps={steps}", "train.eval_every=0", "train.eval_at_start=false",
               "train.save_every=0", "train.save_final=false", "train.log_every=1", "data.eval_fraction=0.0",
               *overrides]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"{alg} failed")
        rows = [json.loads(x) for x in Path(d, "metrics.jsonl").read_text().splitlines()]
        cfg = Path(d, "config.yaml").read_text()
    rows = [r for r in rows if "step_time" in r]
    first, rest = rows[0], rows[1:] or rows
    med = lambda k: statistics.median(r.get(k, 0.0) for r in rest)
    res = {"algorithm": alg, "iterations": len(rows), "first_iteration_s": first["step_time"],
           "iteration_s": med("step_time"), "generate_s": med("time/generate"), "score_s": med("time/score"),
           "reward_mean": med("reward/mean") if "reward/mean" in rest[0] else med("reward/all_mean")}
    res["train_s"] = res["iteration_s"] - res["generate_s"] - res["score_s"]
    import yaml

    from jaxalign.algorithms.registry import section_of

    c = yaml.safe_load(cfg)
    sec = c.get(section_of(alg), {})
    res["settings"] = {"prompts_per_iteration": c["train"]["batch_size"],
                       "samples_per_prompt": sec.get("num_generations") or (round(1 / sec["alpha"]) if sec.get("ranking") == "local" else 1),
                       "max_new_tokens": sec.get("sampling", {}).get("max_new_tokens"),
                       "dtype": c["model"]["dtype"], "max_length": c["data"]["max_length"]}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algorithms", default="ppo,raft")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl_iteration.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    for alg in args.algorithms.split(","):
        r = run(alg, args.steps, args.overrides)
        rows.append(r)
        print(f"{alg}: {r['iteration_s']:.1f} s/iteration", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    print("| algorithm | prompts x samples | new tokens | first iteration (s) | iteration (s) | generate | score | train |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s, it = r["settings"], r["iteration_s"]
        pct = lambda x: f"{x:.1f} s ({100 * x / it:.0f}%)"
        print(f"| {r['algorithm']} | {s['prompts_per_iteration']} x {s['samples_per_prompt']} | {s['max_new_tokens']} | "
              f"{r['first_iteration_s']:.1f} | {it:.1f} | {pct(r['generate_s'])} | {pct(r['score_s'])} | {pct(r['train_s'])} |")


if __name__ == "__main__":
    main()
