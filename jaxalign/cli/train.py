"""``jaxalign <algorithm>`` (train) and ``jaxalign plan`` (memory per device, nothing trained)."""

from __future__ import annotations

import json

from jaxalign.errors import JaxalignError


def cmd_train(args) -> int:
    """``jaxalign <algorithm>``: load the config, join a multi-process run if asked, build the job, train."""
    from jaxalign.config import load_config

    # The config (and the run dir) are checked before JAX and the training code are imported:
    # a config error answers at once.
    cfg = load_config(args.config, args.overrides, algorithm=args.command)
    if args.quiet:
        cfg.quiet = True
    if args.run_dir:
        cfg.run_dir = args.run_dir
    if cfg.run_dir:  # fail before loading anything (run() checks again before it writes)
        from jaxalign.io.outputs import check_output_keys, check_run_dir

        check_output_keys(cfg, check_run_dir(cfg.run_dir, "--run-dir" if args.run_dir else "run_dir"))
    from jaxalign import algorithms
    from jaxalign.parallel import distributed
    from jaxalign.train.loop import run

    # Before anything touches a device: join the other processes of a multi-process run.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    job = algorithms.build_job(cfg)
    out = run(cfg, job)
    if not distributed.is_main():
        return 128 + out["signal"] if out["stopped"] and out.get("signal") else 0
    shown = {k: round(v, 4) for k, v in out["metrics"].items()
             if k in ("loss", "accuracy", "eval/loss", "eval/accuracy", "tokens_per_s", "reward/mean",
                      "eval/reward")}
    print(json.dumps({"run_dir": out["run_dir"], "steps": out["steps"], "stopped": out["stopped"],
                      "wall_s": round(out["wall_s"], 1), **shown}))
    # Stopped by SIGINT/SIGTERM (checkpoint saved): 128 + the signal number, as a shell reports a
    # signal, so `jaxalign ... && next` does not go on and schedulers see an unfinished run.
    return 128 + out["signal"] if out["stopped"] and out.get("signal") else 0


def cmd_plan(args) -> int:
    """``jaxalign plan``: the memory plan of a run config (exit 2 when it does not fit)."""
    from jaxalign.config import load_config

    cfg = load_config(args.config, args.overrides)
    from jaxalign import algorithms
    from jaxalign.train.preflight import plan_job

    job = algorithms.build_job(cfg)
    est = plan_job(cfg, job)
    print(json.dumps(est.to_dict()) if args.json else est.table(), flush=True)
    if cfg.model.lora is not None and not args.json:
        from jaxalign.algorithms.lora import plan_note

        print(plan_note(job), flush=True)
    if not est.fits:
        raise JaxalignError(est.message)
    return 0
