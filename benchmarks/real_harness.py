"""Driver of ``throughput.py --lengths real`` (see :mod:`real_lengths` for the method): one child
process per side, the same-examples check, the summary against issue 21's goals, Markdown.

    .venv/bin/python benchmarks/throughput.py --lengths real [--only sft,dpo] [--examples 16] [--pairs 12]
        [--rows 4] [--max-length 512] [--seed 0] [--quick] [--out benchmarks/results/throughput_real.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import ROOT, emit_result, machine_info, run_child, write_json
from real_lengths import PROMPT_LOGNORMAL, RESPONSE_LOGNORMAL, make_examples, plan_steps

if str(ROOT) not in sys.path:  # this checkout's jaxalign for the packing plan, as the children get it
    sys.path.insert(0, str(ROOT))

SIDES = {"sft": ["jaxalign packed", "jaxalign padded", "TRL", "PyTorch loop"],
         "dpo": ["jaxalign packed", "jaxalign padded", "TRL", "PyTorch loop"]}
# Issue 21's goals on realistic lengths (reported against, not tested): jaxalign packed's real
# tokens/s over the named peer's.
GOALS = {"sft": ("PyTorch loop", 1.5), "dpo": ("TRL", 2.0)}


def child(kind: str, side: str, p: dict) -> dict:
    """Run one side in this (child) process."""
    import real_sides

    if side.startswith("jaxalign"):
        return real_sides.run_jaxalign(kind, side.endswith("packed"), p)
    if side == "PyTorch loop":
        return real_sides.run_torch(kind, p)
    return real_sides.run_trl_sft(p) if kind == "sft" else real_sides.run_trl_dpo(p)


def check_same(results: list[dict]) -> None:
    """Refuse a run whose sides did not train on the same examples and real tokens."""
    first = results[0]
    for r in results[1:]:
        for key in ("examples", "digest", "real_tokens"):
            if r[key] != first[key]:
                raise SystemExit(f"{r['kind']}: {r['side']} has {key}={r[key]}, {first['side']} has {first[key]}: "
                                 "the sides did not process the same examples")


def summarize(results: dict) -> list[dict]:
    """One row per (kind, side): real tokens/s, padding share, peak RSS, and jaxalign packed's
    speed-up over it (its real tokens/s / this side's)."""
    rows = []
    for kind, by_side in results.items():
        packed = by_side["jaxalign packed"]["real_tokens_per_s"]
        for side, r in by_side.items():
            rows.append({"kind": kind, "side": side, "real_tokens_per_s": r["real_tokens_per_s"],
                         "time_s": r["time_s"], "steps": r["steps"], "examples": r["examples"],
                         "real_tokens": r["real_tokens"], "padding_share": 1 - r["real_tokens"] / r["processed_tokens"],
                         "cpu_s": r["cpu_s"], "warmup_s": r["warmup_s"], "compile_s": r.get("compile_s"),
                         "peak_gib": r["peak_gib"], "packed_speedup": packed / r["real_tokens_per_s"],
                         "load": [r["load_before"], r["load_after"]], "setting": r.get("setting")})
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """Issue 21's goals: speed-up of jaxalign packed over the peer, and peak RSS against every peer."""
    out = []
    for kind, (peer, target) in GOALS.items():
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        by = {r["side"]: r for r in mine}
        if peer not in by:
            continue
        packed = by["jaxalign packed"]
        peers = [r for r in mine if not r["side"].startswith("jaxalign")]
        out.append({"kind": kind, "peer": peer, "goal": target, "speedup": by[peer]["packed_speedup"],
                    "met_speed": by[peer]["packed_speedup"] >= target,
                    "met_memory": all(packed["peak_gib"] <= r["peak_gib"] for r in peers)})
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    """The Markdown tables of a run."""
    mb, ma = meta["machine_before"], meta["machine_after"]
    out = [f"Machine: {mb['cpu']}, {mb['cores']} cores, {mb.get('memory_gib')} GiB; load average "
           f"{mb['load_average']} before, {ma['load_average']} after.",
           f"SFT: {meta['examples']} examples; DPO: {meta['pairs']} pairs; {meta['rows']} rows of "
           f"{meta['max_length']} tokens a step (DPO {2 * meta['max_length']}); float32.", "",
           "| run | side | real tokens/s | jaxalign packed speed-up | timed steps | padding share | CPU s "
           "| warm-up (s) | peak RSS (GiB) | load |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = "—" if r["side"] == "jaxalign packed" else f"{r['packed_speedup']:.2f}x"
        out.append(f"| {r['kind'].upper()} | {r['side']} | {r['real_tokens_per_s']:.1f} | {sp} | {r['steps']} "
                   f"| {100 * r['padding_share']:.0f}% | {r['cpu_s']:.0f} | {r['warmup_s']:.1f} "
                   f"| {r['peak_gib']:.2f} | {r['load'][0]:.1f}→{r['load'][1]:.1f} |")
    out += ["", "| goal | measured | speed | memory (packed ≤ every peer) |", "|---|---:|---|---|"]
    if meta.get("quick"):  # tiny rows: every example is cut to the row length, nothing to pack
        out[-2:-2] = ["--quick smoke run: the goals below are not measured by it.", ""]
    for g in goals(rows):
        out.append(f"| {g['kind'].upper()} ≥ {g['goal']:.1f}x {g['peer']} | {g['speedup']:.2f}x "
                   f"| {'met' if g['met_speed'] else 'short'} | {'met' if g['met_memory'] else 'not met'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="sft,dpo", help="comma list of sft, dpo")
    ap.add_argument("--examples", type=int, default=16, help="SFT examples, every side trains on all of them")
    ap.add_argument("--pairs", type=int, default=12, help="DPO pairs, every side trains on all of them")
    ap.add_argument("--rows", type=int, default=4, help="rows a step (padded sides: examples or pairs a step)")
    ap.add_argument("--max-length", type=int, default=512, help="row length; DPO rows hold 2x")
    ap.add_argument("--seed", type=int, default=0, help="seed of the lengths and token ids")
    ap.add_argument("--sides", default=None, help="comma list of sides (default: all four: "
                    + ", ".join(SIDES["sft"]) + ")")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every side")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput_real.json"),
                    help="JSON file of the run (meta, summary, goals, every side's raw result)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, side = args.child.split(":", 1)
        emit_result(child(kind, side, json.loads(args.params)))
        return 0
    for kind in args.only.split(","):
        if kind not in SIDES:
            raise SystemExit(f"--only: unknown run {kind!r} (expected sft, dpo)")
    for side in (args.sides.split(",") if args.sides else []):
        if side not in SIDES["sft"]:
            raise SystemExit(f"--sides: unknown side {side!r} (expected {', '.join(SIDES['sft'])})")
    if args.quick:
        args.examples, args.pairs, args.rows, args.max_length = 6, 4, 2, 64
    from throughput import config_remat

    meta = {"machine_before": machine_info(), "lengths": {"prompt_lognormal": PROMPT_LOGNORMAL,
            "response_lognormal": RESPONSE_LOGNORMAL}, "examples": args.examples, "pairs": args.pairs,
            "rows": args.rows, "max_length": args.max_length, "seed": args.seed, "dtype": "float32", "quick": args.quick,
            "command": "python benchmarks/throughput.py --lengths real " + " ".join(argv or sys.argv[1:])}
    results: dict = {}
    log = []
    for kind in args.only.split(","):
        n = args.examples if kind == "sft" else args.pairs
        ex = make_examples(kind, n, args.max_length, args.seed)
        meta[f"{kind}_steps"] = {"packed": len(plan_steps(ex, args.rows, args.max_length, True)),
                                 "padded": len(plan_steps(ex, args.rows, args.max_length, False))}
        p = {"n": n, "rows": args.rows, "max_length": args.max_length, "seed": args.seed, "remat": config_remat(kind)}
        for side in (args.sides.split(",") if args.sides else SIDES[kind]):
            before, t = os.getloadavg()[0], time.perf_counter()
            res = run_child([sys.executable, __file__, "--child", f"{kind}:{side}", "--params", json.dumps(p)],
                            f"{kind} {side}")
            res.update(load_before=round(before, 2), load_after=round(os.getloadavg()[0], 2),
                       wall_s=time.perf_counter() - t)
            results.setdefault(kind, {})[side] = res
            log.append(res)
            print(f"  {kind} {side}: {res['real_tokens_per_s']:.1f} real tok/s, {res['steps']} steps, "
                  f"peak {res['peak_gib']:.2f} GiB (load {before:.1f} -> {res['load_after']:.1f})", file=sys.stderr)
        check_same(list(results[kind].values()))
    meta["machine_after"] = machine_info()
    rows = summarize(results) if all("jaxalign packed" in v for v in results.values()) else []
    write_json(args.out, {"meta": meta, "summary": rows, "goals": goals(rows), "runs": log})
    if rows:
        print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
