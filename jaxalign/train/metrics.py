"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard when installed,
and PNG plots of the curves in the run directory."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

from jaxalign.errors import NoSpaceLeft, is_no_space


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # a line cut short by a crash mid-write
        return None
    return row if isinstance(row, dict) else None


def _kind(row: dict) -> str:
    """Which writer call made a row: its metric-name prefix (``""`` or ``"eval/"``)."""
    keys = [k for k in row if k != "step"]
    head = keys[0].split("/", 1)[0] + "/" if keys and "/" in keys[0] else ""
    return head if head and all(k.startswith(head) for k in keys) else ""


class MetricsWriter:
    """Append-only JSONL log. On resume, rows past the restored step (and lines a crash cut
    short) are dropped first, and a row already kept for a (step, prefix) is not written twice
    (e.g. the final eval when a finished run is run again).

    Each row is one ``write`` of the whole line; a row the disk has no room for is cut off
    again (the file keeps whole rows only) and :class:`~jaxalign.errors.NoSpaceLeft` is raised,
    its advice ending with ``rerun()`` (e.g. "rerun to resume from step 4"). So the file never
    ends in a torn row that a later row would continue on the same line.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True,
                 rerun: Callable[[], str] = lambda: "rerun"):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._rerun = rerun
        self._seen: set = set()
        if resume_step is not None and self.path.exists():
            rows = [r for r in map(_parse, self.path.read_text().splitlines()) if r is not None]
            kept = [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            self._seen = {(r["step"], _kind(r)) for r in kept}
            tmp = self.path.with_suffix(".jsonl.tmp")
            try:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            except OSError as e:
                tmp.unlink(missing_ok=True)  # the old file is still whole
                if is_no_space(e):
                    raise NoSpaceLeft(tmp, f"rows up to step {resume_step} not rewritten; free space and "
                                           f"{self._rerun()}") from None
                raise
            tmp.replace(self.path)  # atomic: a crash here keeps the old file, never half of it
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Append one row ``{"step": step, prefix + name: value, ...}`` (non-finite values as text)."""
        if not metrics or (int(step), prefix) in self._seen:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            row[prefix + k] = v if math.isfinite(v) else str(v)
        self._append((json.dumps(row) + "\n").encode(), int(step))
        self._seen.add((int(step), prefix))
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)

    def _append(self, line: bytes, step: int) -> None:
        # Unbuffered, one write per row: a buffered file would keep a failed row and try it again
        # at close, after the error was reported. A short write (the disk filled up mid-row) is
        # continued; if the rest does not fit either, the row is cut off again.
        start = os.fstat(self._fd).st_size
        try:
            done = os.write(self._fd, line)
            while done < len(line):
                done += os.write(self._fd, line[done:])
        except OSError as e:
            os.ftruncate(self._fd, start)
            if is_no_space(e):
                raise NoSpaceLeft(self.path, f"the row of step {step} not written; free space and "
                                             f"{self._rerun()}") from None
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a line cut short by a crash is left out)."""
    return [r for r in map(_parse, Path(path).read_text().splitlines()) if r is not None]


# Shown first, in this order, when present; everything else follows alphabetically.
_MAIN = ("loss", "eval/loss", "accuracy", "eval/accuracy", "reward/mean", "eval/reward", "reward/kept_mean",
         "reward_mean", "kl", "kl_ref", "entropy", "response_length", "clipfrac", "value_loss",
         "explained_variance", "lr", "grad_norm", "tokens_per_s", "time/generate", "time/score")


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
    keys = [k for k in keys if k not in ("time", "step_time")][:max_panels]  # the main curves first
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
