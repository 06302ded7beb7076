"""Per-iteration time split (generate / score / train) of the online algorithms, on one process or
several.

    .venv/bin/python benchmarks/rl_iteration.py [--algorithms ppo,raft] [--steps 4] [--size smollm2|tiny]
        [--processes 1,2] [--devices 8] [key=value ...]

Runs ``jaxalign <alg> --config configs/<alg>_<size>.yaml`` for ``--steps`` iterations (no eval,
no checkpoints, no export) as 1 process with ``--devices`` simulated CPU devices, and for each
other count in ``--processes`` as that many processes of ``devices / n`` devices each (a
localhost coordinator; the same global mesh), and reads the run's ``metrics.jsonl``:
``time/generate`` (sampling, one jitted call), ``time/score`` (decode + reward + reference
log-probs) and the whole iteration (``step_time``); "train" is the rest. Iteration 1
(compilation) is reported apart; the table gives the median of the following iterations, and
the peak RSS of the largest process (``ru_maxrss`` of each child). Extra ``key=value``
overrides go to every run. Writes benchmarks/results/rl_iteration.json (``--out``) and prints a
Markdown table.
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


def _launch(cmd: list[str], processes: int, devices: int, d: str) -> list[float]:
    """Run ``cmd`` as ``processes`` processes of ``devices / processes`` devices; peak RSS (GiB) of each."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    from jaxalign.parallel.distributed import local_coordinator  # ROOT on sys.path, as for section_of

    multi = ["--coordinator", local_coordinator(), "--num-processes", str(processes)] if processes > 1 else []
    procs = []
    for i in range(processes):
        err = open(Path(d) / f"stderr{i}.txt", "w")
        procs.append(subprocess.Popen(cmd + (multi + ["--process-id", str(i)] if multi else []), cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=err))
    rss, failed = [], []
    for i, p in enumerate(procs):
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        rss.append(usage.ru_maxrss / 2**20)  # KiB on Linux
        if p.returncode:
            failed.append(i)
    if failed:
        i = failed[0]
        sys.stderr.write(Path(d, f"stderr{i}.txt").read_text()[-3000:])
        code = procs[i].returncode
        how = (f"killed by signal {-code}" + (" (SIGKILL: the kernel's out-of-memory killer, if nothing else "
                                              "sent it)" if code == -9 else "")) if code < 0 else f"exit {code}"
        raise SystemExit(f"{cmd[1]} failed on process {i}: {how}; peak RSS per process (GiB): "
                         + ", ".join(f"{r:.2f}" for r in rss))
    return rss


def jaxalign_command() -> list[str]:
    """The ``jaxalign`` command of this interpreter: its console script, or ``python -m jaxalign.cli``
    where jaxalign is not installed (a checkout on PYTHONPATH, as on a lent GPU machine)."""
    script = Path(sys.executable).parent / "jaxalign"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jaxalign.cli"]


def run(alg: str, steps: int, overrides: list[str], size: str = "smollm2", processes: int = 1,
        devices: int = 8, launcher: list[str] | None = None) -> dict:
    """``launcher``: the command before ``<alg> --config ...`` (default :func:`jaxalign_command`);
    a launcher that writes ``device_peak.json`` beside the run directory (``cli_device_peak.py``)
    adds ``device_peak_gib`` to the result."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [*(launcher or jaxalign_command()), alg, "--config", str(ROOT / "configs" / f"{alg}_{size}.yaml"),
               "--run-dir", str(Path(d) / "run"), "--quiet", f"train.steps={steps}", "train.eval_every=0",
               "train.eval_at_start=false", "train.save_every=0", "train.save_final=false", "train.log_every=1",
               "data.eval_fraction=0.0", "train.plots=false", *overrides]
        rss = _launch(cmd, processes, devices, d)
        rows = [json.loads(x) for x in Path(d, "run", "metrics.jsonl").read_text().splitlines()]
        cfg = Path(d, "run", "config.yaml").read_text()
        peak_file = Path(d, "device_peak.json")
        device_peak = json.loads(peak_file.read_text()) if peak_file.exists() else None
    rows = [r for r in rows if "step_time" in r]
    first, rest = rows[0], rows[1:] or rows
    med = lambda k: statistics.median(r.get(k, 0.0) for r in rest)
    res = {"algorithm": alg, "size": size, "processes": processes, "devices": devices,
           "peak_rss_gib": max(rss), "iterations": len(rows), "first_iteration_s": first["step_time"],
           "iteration_s": med("step_time"), "generate_s": med("time/generate"), "score_s": med("time/score"),
           "reward_mean": med("reward/mean") if "reward/mean" in rest[0] else med("reward/all_mean")}
    res["train_s"] = res["iteration_s"] - res["generate_s"] - res["score_s"]
    if device_peak:
        res.update(device_peak_gib=device_peak["peak_bytes_in_use"] / 2**30, device=device_peak["device"])
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
    ap.add_argument("--size", default="smollm2", help="the configs' suffix: smollm2 or tiny")
    ap.add_argument("--processes", default="1", help="process counts to run, e.g. 1,2")
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices in all")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl_iteration.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    for alg in args.algorithms.split(","):
        for n in (int(x) for x in args.processes.split(",")):
            r = run(alg, args.steps, args.overrides, args.size, n, args.devices)
            rows.append(r)
            print(f"{alg} {n} process(es): {r['iteration_s']:.2f} s/iteration", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    print("| algorithm | model | processes x devices | prompts x samples | new tokens | first iteration (s) | "
          "iteration (s) | generate | score | train | peak RSS / process (GiB) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s, it = r["settings"], r["iteration_s"]
        pct = lambda x: f"{x:.2f} s ({100 * x / it:.0f}%)"
        print(f"| {r['algorithm']} | {r['size']} | {r['processes']} x {r['devices'] // r['processes']} | "
              f"{s['prompts_per_iteration']} x {s['samples_per_prompt']} | {s['max_new_tokens']} | "
              f"{r['first_iteration_s']:.1f} | {it:.2f} | {pct(r['generate_s'])} | {pct(r['score_s'])} | "
              f"{pct(r['train_s'])} | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
