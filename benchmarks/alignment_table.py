"""Alignment table: SFT -> reward model -> PPO-max, vanilla PPO, RAFT, DPO, online DPO, GRPO and
IFT on one task under one compute budget each (``make bench-align``).

    .venv/bin/python benchmarks/alignment_table.py [--budget-minutes 6] [--algorithms raft,ppo-max]
        [--quick] [--out FILE.json] [--work-dir DIR]

The task is ``jaxalign demo``'s: SmolLM2-135M-Instruct continues movie-review openings (the
shipped ``movie_prompts.jsonl``, 260 train / 40 held-out), the gold reward is the VADER compound
score of the continuation. Pipeline (``alignment_runs.prepare``): SFT on the base model's
VADER-best samples -> a reward model trained on VADER-labelled pairs of the SFT policy's own
samples -> every algorithm starts from the SFT policy and sees only the reward model (online:
as the reward; DPO: RM-labelled pairs; IFT: RM-best samples as demonstrations).

Budget: ``--budget-minutes B`` CPU-minutes per algorithm (this process's user + system time, all
threads), counted from after the SFT policy and RM exist to the last update: offline data
sampling, model loading, compilation and every step. CPU time is what other jobs on a shared
machine cannot inflate; ``--wall-cap-minutes`` still bounds the wall time (rows say which limit
ended them), ``--budget-clock wall`` counts wall time instead, ``--steps N`` runs a fixed step
count. Each stage runs in its own process (``--in-process`` for the quick smoke run).

Every row is evaluated on the 40 held-out prompts (one sample each, temperature 1, a fixed key):
gold reward (VADER mean), proxy reward (RM mean), KL per token to the reference (the SFT
policy), response length (tokens), perplexity of the policy on the SFT policy's own held-out
completions (fixed text), distinct-2, and the budget used. Writes ``--out`` (JSON) and the
Markdown table next to it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import alignment_stages as st  # noqa: E402

ROOT = HERE.parent
ROWS = list(st.ALGORITHMS)
PREP_STAGES = ("prep-sft", "prep-rm", "prep-eval")  # alignment_runs.PREP_STAGES
LABELS = {"base": "base (SmolLM2-135M-Instruct)", "base (tiny random)": "base (tiny random model)", "sft": "SFT (the reference)", "ppo-max": "PPO-max",
          "ppo-vanilla": "vanilla PPO", "raft": "RAFT", "dpo": "DPO (offline, RM-labelled pairs)",
          "online-dpo": "online DPO", "grpo": "GRPO", "ift": "IFT (RM-best samples)"}


def _stage(args, stage: str, work: Path, log: Path) -> bool:
    """Run one stage in a subprocess (stdout/stderr to ``log``); True when it succeeded."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--work-dir", str(work),
           "--seed", str(args.seed), "--budget-minutes", str(args.budget_minutes), "--budget-clock", args.budget_clock]
    if args.wall_cap_minutes is not None:
        cmd += ["--wall-cap-minutes", str(args.wall_cap_minutes)]
    cmd += ["--steps", str(args.steps or 0)]
    if args.quick:
        cmd.append("--quick")
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode == 0


def _do_stage(args, stage: str, work: Path) -> dict:
    import alignment_runs as runs

    if stage in PREP_STAGES:
        return runs.prepare(work, args.quick, args.seed, stage)
    budget = None if args.steps else args.budget_minutes * 60
    return runs.run_row(stage, work, args.quick, seed=args.seed, budget_s=budget, clock=args.budget_clock,
                        wall_cap_s=None if args.wall_cap_minutes is None else args.wall_cap_minutes * 60,
                        steps=args.steps)


def _fmt(x, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _se(r: dict) -> str:
    """`` ± s.e.`` of the gold mean over the held-out prompts (when the per-prompt rewards are there)."""
    g = r.get("gold_rewards")
    if not g or len(g) < 2:
        return ""
    m = sum(g) / len(g)
    return f" ± {math.sqrt(sum((x - m) ** 2 for x in g) / (len(g) - 1) / len(g)):.3f}"


def markdown(result: dict) -> str:
    """The Markdown table of ``result`` (as written to the JSON)."""
    head = ("| policy | steps | gold reward (VADER, ± s.e.) | proxy reward (RM) | KL to SFT (per token) | length (tokens) "
            "| perplexity (SFT text) | distinct-2 | CPU min | wall min | ended by |")
    lines = [head, "|---|" + "---:|" * 9 + "---|"]
    for name, r in result["rows"].items():
        if name == "base" and result.get("model") == "tiny random":
            name = "base (tiny random)"
        if "error" in r:
            lines.append(f"| {LABELS.get(name, name)} | failed: {r['error']} |" + " |" * 9)
            continue
        cpu, wall = r.get("budget_cpu_s"), r.get("budget_wall_s")
        lines.append(
            f"| {LABELS.get(name, name)} | {r.get('steps', '—')} | {_fmt(r['gold_reward'], '+.3f')}{_se(r)} | "
            f"{_fmt(r['proxy_reward'], '+.3f')} | {_fmt(r['kl_per_token'], '.3f')} | {_fmt(r['response_length'], '.1f')} | "
            f"{_fmt(r['perplexity'], '.2f')} | {_fmt(r['distinct_2'], '.2f')} | "
            f"{_fmt(None if cpu is None else cpu / 60, '.1f')} | {_fmt(None if wall is None else wall / 60, '.1f')} | "
            f"{r.get('ended_by') or '—'} |")
    return "\n".join(lines)


def comparisons(rows: dict) -> list[str]:
    """The papers' headline comparisons, checked mechanically on this run's rows (the README
    discusses them; these lines only state which way the numbers point)."""
    out = []
    raft, ppo, van = rows.get("raft"), rows.get("ppo-max"), rows.get("ppo-vanilla")
    ok = lambda r: r is not None and "error" not in r  # noqa: E731
    if ok(raft) and ok(ppo):
        out.append(
            f"RAFT vs PPO-max (RAFT paper: RAFT reaches similar or higher reward with lower perplexity/KL): "
            f"gold {raft['gold_reward']:+.3f} vs {ppo['gold_reward']:+.3f}, KL {raft['kl_per_token']:.3f} vs "
            f"{ppo['kl_per_token']:.3f}, perplexity {raft['perplexity']:.2f} vs {ppo['perplexity']:.2f}, "
            f"{raft['steps']} vs {ppo['steps']} steps in the same budget")
    if ok(ppo) and ok(van):
        mx = lambda r: max((x for x in r["curves"]["kl_ref"] if x is not None), default=float("nan"))  # noqa: E731
        out.append(
            f"PPO-max vs vanilla PPO (PPO-max paper: vanilla PPO drifts - KL grows, proxy reward is hacked, "
            f"outputs collapse - while PPO-max stays stable): held-out KL {ppo['kl_per_token']:.3f} vs "
            f"{van['kl_per_token']:.3f} per token, largest training KL (per sequence) {mx(ppo):.3f} vs {mx(van):.3f}, "
            f"proxy - gold gap {ppo['proxy_reward'] - ppo['gold_reward']:+.3f} vs "
            f"{van['proxy_reward'] - van['gold_reward']:+.3f}, distinct-2 {ppo['distinct_2']:.2f} vs {van['distinct_2']:.2f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-minutes", type=float, default=6.0,
                    help="compute budget per algorithm in CPU-minutes (default 6; see --budget-clock)")
    ap.add_argument("--budget-clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--wall-cap-minutes", type=float, default=None,
                    help="also stop an algorithm after this many wall minutes (default: none)")
    ap.add_argument("--steps", type=int, default=None, help="a fixed number of steps per algorithm instead of a budget")
    ap.add_argument("--algorithms", default=",".join(ROWS), help=f"comma-separated, of: {','.join(ROWS)}")
    ap.add_argument("--quick", action="store_true",
                    help="tiny random model, 2 steps per algorithm: a smoke run of the whole pipeline")
    ap.add_argument("--out", default=None, help="the JSON (default benchmarks/results/alignment_table.json; "
                                                "--quick: WORK_DIR/alignment_table.json)")
    ap.add_argument("--work-dir", default=None, help="runs and data (default runs/bench-align[-quick])")
    ap.add_argument("--reuse-prep", action="store_true",
                    help="continue from WORK_DIR's set-up (its finished parts: SFT, RM pairs, RM, evaluation)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: rebuild the table from WORK_DIR's finished rows")
    ap.add_argument("--in-process", action="store_true", help="run every stage in this process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick and args.steps is None:
        args.steps = 2
    work = Path(args.work_dir or ROOT / ("runs/bench-align-quick" if args.quick else "runs/bench-align")).resolve()
    if args.stage:
        _do_stage(args, args.stage, work)
        return 0
    rows = [r.strip() for r in args.algorithms.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown algorithm(s) {bad}; choose from {ROWS}")
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (work / "alignment_table.json" if args.quick
                                           else ROOT / "benchmarks" / "results" / "alignment_table.json")
    t0 = time.perf_counter()
    load0 = st.load_avg()
    done = [p.name for p in work.glob("prep*.json")]
    if done and not (args.reuse_prep or args.table_only):
        raise SystemExit(f"{work} already holds a set-up ({', '.join(sorted(done))}); pass --reuse-prep to "
                         "continue from it, or give a new --work-dir")
    for stage in () if args.table_only else PREP_STAGES:
        if (work / f"{stage}.json").exists():
            continue
        st.say(f"{stage} (log: {work / (stage + '.log')})")
        if args.in_process:
            _do_stage(args, stage, work)
        elif not _stage(args, stage, work, work / f"{stage}.log"):
            raise SystemExit(f"{stage} failed; see {work / (stage + '.log')}")
    prep = json.loads((work / "prep.json").read_text())
    results = dict(prep["rows"])  # base, sft
    for row in rows:
        if args.table_only:
            if (work / row / "result.json").exists():
                results[row] = json.loads((work / row / "result.json").read_text())
            continue
        st.say(f"{row} (log: {work / (row + '.log')})")
        try:
            if args.in_process:
                _do_stage(args, row, work)
            elif not _stage(args, row, work, work / f"{row}.log"):
                raise RuntimeError(f"see {work / (row + '.log')}")
            results[row] = json.loads((work / row / "result.json").read_text())
        except Exception as e:  # noqa: BLE001 - one failed algorithm must not lose the table
            if args.in_process:
                raise
            results[row] = {"error": str(e)[:200]}
        r = results[row]
        st.say(f"{row}: " + (r["error"] if "error" in r else
                             f"gold {r['gold_reward']:+.3f}, proxy {r['proxy_reward']:+.3f}, KL {r['kl_per_token']:.3f}"))
    budget = (f"{args.steps} steps per algorithm" if args.steps else
              f"{args.budget_minutes:g} {args.budget_clock.upper()}-minutes per algorithm"
              + (f" (wall cap {args.wall_cap_minutes:g} min)" if args.wall_cap_minutes else ""))
    result = {"model": "tiny random" if args.quick else demo_model(), "budget": budget,
              "cpus": os.cpu_count(), "load_start": load0, "load_end": st.load_avg(),
              "total_wall_s": None if args.table_only else time.perf_counter() - t0,
              "not_run": [r for r in rows if r not in results], "prep": {k: v for k, v in prep.items() if k != "rows"},
              "rows": results}
    result["comparisons"] = comparisons(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n\n" + "\n".join(f"- {c}" for c in result["comparisons"]) + "\n")
    print(table)
    for c in result["comparisons"]:
        print("-", c)
    return 0


def demo_model() -> str:
    from jaxalign.examples import demo

    return demo.MODEL


if __name__ == "__main__":
    sys.exit(main())
