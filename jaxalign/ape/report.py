"""The results of ``jaxalign ape``: ``ape_results.json`` (everything: candidates, filter stages,
rounds, held-out table), ``ape_results.md`` (the table) and ``ape_config.yaml`` (the resolved config)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

LABELS = {"human": "human-written", "ape": "APE (best)", "none": "no instruction"}


def format_table(out: dict) -> str:
    """The Markdown table: per task, human vs APE vs no instruction on the held-out rows."""
    lines = ["| task | prompt | held-out log-prob (mean) | held-out exact match | instruction |",
             "|---|---|---:|---:|---|"]
    for rec in out["tasks"]:
        for row in rec["table"]:
            text = (row["instruction"] or "(none)").replace("|", "\\|")
            lines.append(f"| {rec['task']} | {LABELS[row['row']]} | {row['logprob']:.3f} | "
                         f"{row['exact_match']:.2f} | {text} |")
    return "\n".join(lines)


def write_results(run_dir: Path, out: dict, config: dict) -> None:
    """Write the three files into ``run_dir`` (created if needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ape_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "ape_results.json").write_text(json.dumps(out, indent=1))
    selected = "\n".join(f"- {rec['task']}: selected by {rec['metric']} (train score "
                         f"{rec['best_train_score']:.3f}): {rec['best']}" for rec in out["tasks"])
    (run_dir / "ape_results.md").write_text(
        f"# APE results\n\n{format_table(out)}\n\nSelected instructions:\n\n{selected}\n\n"
        f"Wall time: {out['wall_s']:.0f} s.\n")
