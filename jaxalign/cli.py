"""The ``jaxalign`` command line.

Every user-input problem is a :class:`~jaxalign.errors.JaxalignError`: printed as one
``error: ...`` line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxalign.errors import JaxalignError


def _model_summary(model) -> dict:
    import flax.nnx as nnx
    import jax

    cfg = model.config
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    n = sum(x.size for x in leaves)
    nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
    return {
        "architecture": cfg.architecture,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "attention_heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "tied_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict or None,
        "sliding_window": cfg.sliding_window,
        "max_position_embeddings": cfg.max_position_embeddings,
        "param_dtype": cfg.param_dtype,
        "parameters": int(n),
        "size_mib": round(nbytes / 2**20, 1),
    }


def cmd_info(args) -> int:
    from jaxalign.api import load_model

    info = _model_summary(load_model(args.model, dtype=args.dtype))
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            if k == "parameters":
                v = f"{v:,} ({v / 1e6:.1f}M)"
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_export(args) -> int:
    from jaxalign.api import load_model, load_tokenizer, save_model

    model = load_model(args.model, dtype=args.dtype)
    out = save_model(model, args.out)
    try:
        tok = load_tokenizer(args.model)
    except JaxalignError as e:
        tok = None
        print(f"note: no tokenizer exported ({e})", file=sys.stderr)
    else:
        tok.save_pretrained(str(out))
    extra = " + tokenizer" if tok is not None else ""
    print(f"wrote {out} (Hugging Face format: config.json + safetensors{extra})")
    return 0


def cmd_train(args) -> int:
    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.train.loop import run

    module = algorithms.get(args.command)
    cfg = load_config(args.config, args.overrides, algorithm=args.command)
    if args.quiet:
        cfg.quiet = True
    if args.run_dir:
        cfg.run_dir = args.run_dir
    if cfg.run_dir:  # fail before loading anything (run() checks again before it writes)
        from jaxalign.io.outputs import check_output_keys, check_run_dir

        check_output_keys(cfg, check_run_dir(cfg.run_dir, "--run-dir" if args.run_dir else "run_dir"))
    from jaxalign import distributed

    # Before anything touches a device: join the other processes of a multi-process run.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    job = module.build_job(cfg)
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
    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.train.preflight import plan

    for name in algorithms.ALGORITHMS:  # register every config section; the file names one
        algorithms.get(name)
    cfg = load_config(args.config, args.overrides)
    est = plan(cfg)
    print(json.dumps(est.to_dict()) if args.json else est.table(), flush=True)
    if not est.fits:
        raise JaxalignError(est.message)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxalign", description="Align language models in JAX.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="architecture, sizes and parameter count of a model")
    info.add_argument("--model", required=True, help="HF dir, .gguf file or alias (smollm2-135m-instruct)")
    info.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    info.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    info.set_defaults(func=cmd_info)

    exp = sub.add_parser("export", help="write a model (HF dir or GGUF) as a Hugging Face directory")
    exp.add_argument("--model", required=True, help="HF dir, .gguf file or alias")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    exp.set_defaults(func=cmd_export)

    plan = sub.add_parser("plan", help="memory per device of a run's train step, and whether it fits")
    plan.add_argument("--config", required=True, help="YAML run config (its algorithm: key picks the algorithm)")
    plan.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for training")
    plan.set_defaults(func=cmd_plan)

    from jaxalign import algorithms

    for name in algorithms.ALGORITHMS:
        tr = sub.add_parser(name, help=f"train with {name} (see configs/{name}_*.yaml)")
        tr.add_argument("--config", help="YAML run config")
        tr.add_argument("--run-dir", help="output directory (default: runs/<algorithm>-<time>)")
        tr.add_argument("--quiet", action="store_true", help="no progress bar")
        mp = tr.add_argument_group("multi-process runs (every process runs the same command; "
                                   "README: Multi-process and TPU VM)")
        mp.add_argument("--coordinator", metavar="HOST:PORT",
                        help="address of process 0 (env JAXALIGN_COORDINATOR)")
        mp.add_argument("--num-processes", type=int, metavar="N", help="env JAXALIGN_NUM_PROCESSES")
        mp.add_argument("--process-id", type=int, metavar="I", help="0..N-1 (env JAXALIGN_PROCESS_ID)")
        mp.add_argument("--distributed", action="store_true",
                        help="auto-detect the processes (Cloud TPU VM, SLURM, Open MPI)")
        tr.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optim.lr=1e-4 train.steps=100")
        tr.set_defaults(func=cmd_train)

    try:
        from jaxalign.rollout.cli import add_generate_args, generate_cli
    except ImportError:
        pass
    else:
        gen = sub.add_parser("generate", help="sample completions from a model")
        add_generate_args(gen)
        gen.set_defaults(func=generate_cli)

    from jaxalign.demo import add_demo_args, cmd_demo

    demo = sub.add_parser("demo", help="align SmolLM2-135M-Instruct toward positive movie reviews (VADER)")
    add_demo_args(demo)
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except JaxalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - out of memory: sizes in the config, reported in one line
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = " ".join(str(e).split())[:300]
        print(f"error: out of memory ({first}); lower train.micro_batch_size / train.batch_size, the "
              "sequence lengths or the model size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
