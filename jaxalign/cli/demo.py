"""``jaxalign demo``: the command-line face of :mod:`jaxalign.examples.demo`."""

from __future__ import annotations

from jaxalign.examples.demo import PLANS, run_demo


def add_demo_args(p) -> None:
    """The ``jaxalign demo`` options."""
    p.add_argument("--algorithm", choices=list(PLANS), default=None,
                   help="raft (default), ppo, online-dpo, grpo or dpo (offline, on VADER-labelled pairs)")
    p.add_argument("--tiny", action="store_true", help="a tiny random model: the same code path in seconds")
    p.add_argument("--run-dir", help="output directory (default: runs/demo-<algorithm>-<time>)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="time budget on 2 CPU cores, turned into a step count (default 10)")
    p.add_argument("--steps", type=int, default=None, help="train steps (overrides --minutes)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_demo(args) -> int:
    """``jaxalign demo``: run it and print the summary."""
    from jaxalign.examples.demo_report import format_summary

    summary = run_demo(args.algorithm, tiny=args.tiny, run_dir=args.run_dir, minutes=args.minutes,
                       steps=args.steps, quiet=args.quiet)
    print(format_summary(summary))
    return 0
