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
    from jaxalign.algorithms.plan import check_before_run

    check_before_run(cfg)  # online: the whole loop's abstract plan against a known limit, before any build
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
    """``jaxalign plan``: the abstract memory plan of a run config (exit 2 when it does not fit)."""
    import os
    import sys

    from jaxalign.config import load_config

    cfg = load_config(args.config, args.overrides)
    devices = getattr(args, "devices", None)
    if devices and "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get(
            "XLA_FLAGS", ""):
        # A hypothetical mesh on this machine's CPU: as many host devices as asked (only
        # possible before JAX starts; otherwise hypothetical_mesh says how).
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={devices}").strip()
    from jaxalign.algorithms.plan import hypothetical_mesh, plan_config
    from jaxalign.train.preflight import parse_bytes

    memory = getattr(args, "device_memory", None)
    hypothetical_mesh(cfg, devices, parse_bytes(memory, "--device-memory") if memory else None)
    plan = plan_config(cfg)
    print(json.dumps(plan.to_dict()) if args.json else plan.table(), flush=True)
    if not plan.fits:
        raise JaxalignError(plan.message)
    return 0
