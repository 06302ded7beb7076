"""The training curves people read: ``plots/training.png`` (``training_2.png``, ... when there
are more panels than one page holds), rewritten at every eval and checkpoint and at the end.

:func:`plan_panels` is a pure function from metric rows (``metrics.jsonl``) to the ordered
panels; :func:`write_plots` draws them. The plan:

- every logged metric is in a panel (no cap);
- an eval metric is drawn on the panel of the train metric it measures (``eval/loss`` with
  ``loss``; ``eval/reward``, the held-out reward, with ``reward/mean``), with its step-0 point
  when the run evaluated before training (``train.eval_at_start``);
- a flat panel (one value throughout) and a panel that repeats an earlier one exactly are left
  out (the kept panel's title names the repeats: ``loss (= nll)``);
- reward first, then KL, then loss, then the other main curves, then the rest alphabetically,
  throughput and timings last;
- throughput and timings (``tokens_per_s``, ``step_time``, ``time/...``) leave out their first
  logged point: it holds the first step, which compiles the step function.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

PER_PAGE = 20  # panels per PNG (5 rows of 4)
COLS = 4
EVAL = "eval/"
# An eval metric named differently from the train metric it measures.
_EVAL_OF = {"reward": "reward/mean"}
# Not curves: wall-clock stamps.
_SKIP = ("time",)
# The main curves, in this order within their group (see _rank).
_MAIN = ("reward/mean", "reward", "reward/kept_mean", "reward_mean", "rewards/margins", "rewards/accuracies",
         "kl", "kl_ref", "approx_kl", "loss", "pg_loss", "policy_loss", "value_loss", "accuracy", "entropy",
         "response_length", "clipfrac", "explained_variance", "lr", "grad_norm", "tokens_per_s", "step_time",
         "time/generate", "time/score")


@dataclasses.dataclass(frozen=True)
class Series:
    """One curve: ``name`` (as logged), its points, and whether it is an eval metric."""

    name: str
    steps: tuple
    values: tuple
    eval: bool = False


@dataclasses.dataclass(frozen=True)
class Panel:
    """One subplot: ``title``, the train curve first and any eval curve overlaid, and the
    metrics left out as exact repeats of it (``same``)."""

    title: str
    series: tuple
    same: tuple = ()

    @property
    def names(self) -> tuple:
        """Every metric the panel shows (its curves' and its repeats')."""
        return tuple(s.name for s in self.series) + self.same


def is_throughput(name: str) -> bool:
    """Whether ``name`` is a throughput or timing metric (its first point holds the compile)."""
    return name.endswith("_per_s") or name in ("step_time", "steps_per_s") or name.startswith("time/")


def _rank(name: str) -> tuple:
    words = name.replace("/", "_").split("_")
    if is_throughput(name):
        group = 4
    elif name.startswith("reward"):
        group = 0
    elif "kl" in words:
        group = 1
    elif "loss" in words:
        group = 2
    else:
        group = 3
    return group, _MAIN.index(name) if name in _MAIN else len(_MAIN), name


def _series(rows: list[dict]) -> dict[str, Series]:
    points: dict[str, dict] = {}
    for r in rows:
        step = r.get("step")
        if not isinstance(step, int):
            continue
        for k, v in r.items():
            # bool is an int; a non-finite value is logged as text ("nan"): a gap in the curve.
            if k == "step" or k in _SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            points.setdefault(k, {})[step] = float(v)  # a step logged twice: the last value
    out = {}
    for k, pts in points.items():
        steps = sorted(pts)
        if is_throughput(k):
            steps = steps[1:]  # the first logged point includes compiling the step
        if steps:
            out[k] = Series(k, tuple(steps), tuple(pts[s] for s in steps), k.startswith(EVAL))
    return out


def _flat(panel: Panel) -> bool:
    values = [v for s in panel.series for v in s.values]
    return len(values) > 1 and max(values) == min(values)


def plan_panels(rows: list[dict]) -> list[Panel]:
    """The ordered panels that show the metric ``rows`` (see the module docstring)."""
    series = _series(rows)
    train = {k: s for k, s in series.items() if not s.eval}
    overlays: dict[str, list] = {}
    alone = []
    for k, s in series.items():
        if not s.eval:
            continue
        base = k[len(EVAL):]
        base = base if base in train else _EVAL_OF.get(base, base)
        (overlays.setdefault(base, []) if base in train else alone).append(s)
    panels = [Panel(k, (s, *overlays.get(k, ()))) for k, s in train.items()]
    panels += [Panel(s.name, (s,)) for s in alone]
    panels.sort(key=lambda p: _rank(p.title[len(EVAL):] if p.title.startswith(EVAL) else p.title))
    kept: list[Panel] = []
    by_data: dict = {}
    data = lambda s: (s.eval, s.steps, s.values)
    for p in panels:
        if _flat(p):
            continue
        key = data(p.series[0])
        if key in by_data:  # its curve repeats a kept panel's exactly: drawn there, named in its title
            i = by_data[key]
            have = {data(s) for s in kept[i].series}
            extra = tuple(s for s in p.series[1:] if data(s) not in have)
            kept[i] = dataclasses.replace(kept[i], series=kept[i].series + extra, same=kept[i].same + (p.title,))
            continue
        by_data[key] = len(kept)
        kept.append(p)
    return kept


def _title(p: Panel) -> str:
    title = p.title + (f" (= {', '.join(p.same)})" if p.same else "")
    return title + (" (after the compile step)" if is_throughput(p.title) else "")


def _draw(panels: list[Panel], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    cols = min(COLS, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4 * cols, 2.8 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, p in zip(axes.flat, panels):
        for s in p.series:
            few = len(s.steps) < 30
            ax.plot(s.steps, s.values, label=s.name, color="C1" if s.eval else "C0",
                    marker="o" if (few or s.eval) else None, ms=3, ls="--" if s.eval else "-")
        if len(p.series) > 1:
            ax.legend(fontsize=7)
        ax.set_title(_title(p), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    # Written beside and renamed: a reader (or a crash) never sees half a PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=90, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_plots(run_dir: str | Path) -> Path | None:
    """Draw every logged metric of ``run_dir/metrics.jsonl`` into ``run_dir/plots/training.png``
    (and ``training_2.png``, ... past :data:`PER_PAGE` panels); return the first page's path, or
    None without matplotlib or without any curve."""
    try:
        import matplotlib  # noqa: F401  (the optional [demo] extra)
    except ImportError:
        return None
    from jaxalign.train.metrics import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    panels = plan_panels(read_metrics(path)) if path.exists() else []
    if not panels:
        return None
    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    pages = [panels[i:i + PER_PAGE] for i in range(0, len(panels), PER_PAGE)]
    names = ["training.png"] + [f"training_{i}.png" for i in range(2, len(pages) + 1)]
    for name, page in zip(names, pages):
        _draw(page, out / name)
    for old in out.glob("training_*.png"):  # pages an earlier (longer) plan wrote
        if old.name not in names:
            old.unlink(missing_ok=True)
    return out / "training.png"
