"""``jaxalign ape``: automatic prompt engineering (:mod:`jaxalign.ape`) from a YAML config."""

from __future__ import annotations


def help_epilog() -> str:
    """The config keys with their defaults and meanings (from the dataclasses' docstrings)."""
    from jaxalign.ape.config import ApeRunConfig
    from jaxalign.config.fields import config_keys

    rows = list(config_keys(ApeRunConfig))
    width = max(len(k) + len(d) for k, d, _ in rows) + 4
    return "config keys (default: meaning):\n" + "\n".join(
        f"  {f'{k}: {d}':<{width}} {m}" for k, d, m in rows)


def add_ape_args(p) -> None:
    """The ``jaxalign ape`` options."""
    p.add_argument("--config", help="YAML config (configs/ape_smollm2.yaml); default: every default")
    p.add_argument("--run-dir", help="output directory (default: runs/ape-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. ape.num_candidates=4")


def cmd_ape(args) -> int:
    """Load the config, run APE, print the results table."""
    from jaxalign.ape.config import load_ape_config

    cfg = load_ape_config(args.config, args.overrides)
    if args.quiet:
        cfg.quiet = True
    if args.run_dir:
        cfg.run_dir = args.run_dir
    from jaxalign.ape.report import format_table
    from jaxalign.ape.run import run_ape

    out = run_ape(cfg)
    print(format_table(out))
    print(f"results: {out['run_dir']}/ape_results.md ({out['wall_s']:.0f} s)")
    return 0
