"""Metrics: ``metrics.jsonl`` (one JSON object per logged step, each the mean over the
``log_every`` steps since the last one), the experiment trackers of ``train.report_to``,
``samples.jsonl`` (online algorithms' sample completions). The PNG plots of the curves:
:mod:`jaxalign.train.plots`."""

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


class _Jsonl:
    """An append-only JSONL file of whole rows. On resume, rows past the restored step (and
    lines a crash cut short) are dropped first; a fresh run (no resume step) starts a new file.
    ``seen``: the ``(step, kind(row))`` of the rows kept. The file is opened at the first row
    (``lazy``) or at once."""

    def __init__(self, path: Path, resume_step: int | None, rerun: Callable[[], str], kind: Callable[[dict], str],
                 lazy: bool = False):
        self.path, self._rerun, self.seen = path, rerun, set()
        if resume_step is not None and self.path.exists():
            rows = [r for r in map(_parse, self.path.read_text().splitlines()) if r is not None]
            kept = [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            self.seen = {(r["step"], kind(r)) for r in kept}
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
        self._fd = -1 if lazy else self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, rows: list[dict], step: int, what: str) -> None:
        """Append ``rows`` in one write (``what`` names them in a disk-full error)."""
        if self._fd < 0:
            self._fd = self._open()
        line = "".join(json.dumps(r) + "\n" for r in rows).encode()
        # Unbuffered, one write per call: a buffered file would keep a failed row and try it again
        # at close, after the error was reported. A short write (the disk filled up mid-row) is
        # continued; if the rest does not fit either, the rows are cut off again.
        start = os.fstat(self._fd).st_size
        try:
            done = os.write(self._fd, line)
            while done < len(line):
                done += os.write(self._fd, line[done:])
        except OSError as e:
            os.ftruncate(self._fd, start)
            if is_no_space(e):
                raise NoSpaceLeft(self.path, f"{what} of step {step} not written; free space and "
                                             f"{self._rerun()}") from None
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MetricsWriter:
    """Append-only JSONL log (``metrics.jsonl``), the trackers of ``train.report_to`` (see
    :mod:`jaxalign.train.report`) and, for online algorithms, ``samples.jsonl`` (sample
    completions with their rewards).

    On resume, rows past the restored step (and lines a crash cut short) are dropped first, and
    a row already kept for a (step, prefix) is not written twice (e.g. the final eval when a
    finished run is run again).

    Each row is one ``write`` of the whole line; a row the disk has no room for is cut off
    again (the file keeps whole rows only) and :class:`~jaxalign.errors.NoSpaceLeft` is raised,
    its advice ending with ``rerun()`` (e.g. "rerun to resume from step 4"). So the file never
    ends in a torn row that a later row would continue on the same line.

    ``report_to``: the backends (default: TensorBoard, or none when ``tensorboard`` is False);
    ``config``: the resolved run config, recorded by the backends that keep parameters.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True,
                 rerun: Callable[[], str] = lambda: "rerun", report_to=None, config: dict | None = None):
        from jaxalign.train.report import open_trackers

        run_dir = Path(run_dir)
        self.path, self._rerun = run_dir / "metrics.jsonl", rerun
        self._samples = _Jsonl(run_dir / "samples.jsonl", resume_step, rerun, lambda r: "samples", lazy=True)
        self._log = _Jsonl(self.path, resume_step, rerun, _kind)
        if report_to is None:
            report_to = "tensorboard" if tensorboard else "none"
        try:
            self._trackers = open_trackers(report_to, run_dir, resume_step, config)
        except BaseException:
            self._log.close()
            raise

    @property
    def _seen(self) -> set:
        return self._log.seen

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Append one row ``{"step": step, prefix + name: value, ...}`` (non-finite values as text)."""
        if not metrics or (int(step), prefix) in self._seen:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            row[prefix + k] = v if math.isfinite(v) else str(v)
        self._log.append([row], int(step), "the row")
        self._seen.add((int(step), prefix))
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, float)}
        for t in self._trackers:
            self._track(t.log, int(step), scalars, what=f"the {type(t).__name__} data")

    def samples(self, step: int, rows: list[dict]) -> None:
        """Log sample completions of ``step``: ``rows`` of ``{"prompt", "completion", "reward"}``
        into ``samples.jsonl`` (one line each, with the step) and to the trackers with tables."""
        if not rows or (int(step), "samples") in self._samples.seen:
            return
        rows = [{"step": int(step), "prompt": str(r["prompt"]), "completion": str(r["completion"]),
                 "reward": float(r["reward"]) if math.isfinite(float(r["reward"])) else str(float(r["reward"]))}
                for r in rows]  # a non-finite reward as text, as in metrics.jsonl
        self._samples.append(rows, int(step), "the samples")
        self._samples.seen.add((int(step), "samples"))
        for t in self._trackers:
            self._track(t.samples, int(step), rows, what=f"the {type(t).__name__} samples")

    def _track(self, call, step: int, data, what: str) -> None:
        # A tracker's file on a full disk stops the run like metrics.jsonl does: one line.
        try:
            call(step, data)
        except OSError as e:
            if is_no_space(e):
                where = e.filename or getattr(getattr(call, "__self__", None), "path", "a tracker's file")
                raise NoSpaceLeft(where, f"{what} of step {step} not written; free space and {self._rerun()}") \
                    from None
            raise

    def close(self) -> None:
        """Close the files and end the trackers' runs."""
        self._log.close()
        self._samples.close()
        trackers, self._trackers = self._trackers, []
        for t in trackers:
            t.close()


# Taken at the logged step, not averaged: the rate the schedule gives there (as the HF Trainer).
_LAST = ("lr",)


def interval_mean(rows: list[dict]) -> dict:
    """The metrics of ``log_every`` steps (one dict per step, host floats) as one logged row:
    each metric's mean over the steps that have a finite value of it, as the HF Trainer logs the
    loss averaged since the last log (a skipped non-finite step is counted in ``skipped_steps``
    and does not make the whole interval NaN; with no finite value at all, the last value).
    ``lr`` is the last step's."""
    out: dict = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        vals = [float(r[key]) for r in rows if key in r]
        finite = [v for v in vals if math.isfinite(v)]
        out[key] = vals[-1] if key in _LAST or not finite else math.fsum(finite) / len(finite)
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a line cut short by a crash is left out)."""
    return [r for r in map(_parse, Path(path).read_text().splitlines()) if r is not None]
