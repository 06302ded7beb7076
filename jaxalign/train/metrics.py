"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard when installed,
and PNG plots of the curves in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Append-only JSONL log; on resume, lines past the restored step are dropped first."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            row[prefix + k] = v if math.isfinite(v) else str(v)
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


# Shown first, in this order, when present; everything else follows alphabetically.
_MAIN = ("loss", "eval/loss", "accuracy", "eval/accuracy", "reward_mean", "kl", "lr", "grad_norm",
         "tokens_per_s")


def write_plots(run_dir: str | Path, max_panels: int = 16) -> Path | None:
    """Plot every logged metric against step into ``run_dir/plots/training.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not rows:
        return None
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    keys = [k for k in _MAIN if k in keys] + [k for k in keys if k not in _MAIN]
    keys = [k for k in keys if k not in ("time", "step_time")][:max_panels]
    n = len(keys)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "training.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
