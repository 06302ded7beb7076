"""Shared builders for the algorithm tests: each algorithm's tiny config (configs/<name>_tiny.yaml),
a smaller model for the tests that compile several train steps, configs and jobs built from them,
CLI runs of them and the metrics those runs log."""

from __future__ import annotations

import json
from pathlib import Path

from jaxalign.algorithms import registry

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = registry.BUILTIN
TINY = {name: str(ROOT / "configs" / f"{name}_tiny.yaml") for name in ALGORITHMS}

# A smaller model than the tiny configs' (hidden 64, intermediate 128) for the tests that compile
# several train steps; the same code paths (attention, MLP, tied head) at a quarter of the work.
SMALL_MODEL = ["model.config.hidden_size=32", "model.config.intermediate_size=64"]
# ... and smaller still: one layer of 2 heads sharing 1 KV head (grouped-query attention kept).
SMALLEST_MODEL = [*SMALL_MODEL, "model.config.num_hidden_layers=1", "model.config.num_attention_heads=2",
                  "model.config.num_key_value_heads=1"]


def tiny_cfg(algorithm: str, *overrides: str, quiet: bool = True):
    """The RunConfig of ``algorithm``'s tiny config with ``overrides`` (no progress bars unless
    ``quiet=False``)."""
    from jaxalign.config import load_config

    cfg = load_config(TINY[algorithm], list(overrides), algorithm=algorithm)
    cfg.quiet = quiet
    return cfg


def algorithm_module(algorithm: str):
    """The module of ``algorithm`` (its ``Config``, ``build_job`` and pure pieces)."""
    return registry.get(algorithm).load()


def tiny_job(algorithm: str, *overrides: str):
    """(cfg, job): :func:`tiny_cfg` and the algorithm's ``build_job`` of it."""
    cfg = tiny_cfg(algorithm, *overrides)
    return cfg, algorithm_module(algorithm).build_job(cfg)


def run_cli(algorithm: str, run_dir, *overrides: str) -> int:
    """``jaxalign <algorithm> --config <tiny config> --run-dir run_dir --quiet overrides...`` in
    this process; the exit code."""
    from jaxalign.cli import main

    return main([algorithm, "--config", TINY[algorithm], "--run-dir", str(run_dir), "--quiet", *overrides])


def metric_rows(run_dir) -> list[dict]:
    """Every row of ``run_dir/metrics.jsonl``, in order."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
