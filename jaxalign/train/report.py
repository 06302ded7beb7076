"""Experiment trackers (``train.report_to``): TensorBoard, Weights & Biases, Trackio, MLflow,
each through the library itself.

:func:`~jaxalign.config.report_to.parse_report_to` checks the config value (when the config is
loaded, before anything is compiled). :func:`open_trackers` starts the trackers; each tracker has
``log(step, scalars)``, ``samples(step, rows)`` (a table of sample completions; backends without
tables get none) and ``close()``. Only process 0 opens trackers (the loop gives the other
processes no writer at all).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from jaxalign.config.report_to import BACKENDS, parse_report_to  # noqa: F401  (re-exported)

SAMPLE_COLUMNS = ("step", "prompt", "completion", "reward")


def _table_rows(rows: list[dict]) -> list[list]:
    # One type per column for the table backends: a non-finite reward (text in samples.jsonl) as a float.
    return [[r["step"], r["prompt"], r["completion"], float(r["reward"])] for r in rows]


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (config values as trackers' flat parameters)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _markdown(rows: list[dict]) -> str:
    """The sample rows as a Markdown table (TensorBoard's text plugin renders Markdown)."""
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", "<br>")
    lines = ["| " + " | ".join(SAMPLE_COLUMNS[1:]) + " |", "|---|---|---|"]
    lines += ["| " + " | ".join(esc(r.get(c, "")) for c in SAMPLE_COLUMNS[1:]) + " |" for r in rows]
    return "\n".join(lines)


class TensorBoard:
    """TensorBoard event files in ``run_dir/tensorboard``, written with tensorboardX's protobufs
    and record writer, synchronously: one event per logged row, flushed at once. (tensorboardX's
    ``SummaryWriter`` writes from a thread through a bounded queue; when a write fails, e.g. on a
    full disk, the thread dies and the next ``add_scalar`` blocks forever. Here a failed write is
    an ``OSError`` in the caller, which stops the run with one line.) Events at or past
    ``purge_step`` in earlier files are hidden, as ``SummaryWriter(purge_step=...)`` does (a resumed
    run logs those steps again; a fresh run all of them)."""

    def __init__(self, run_dir: Path, purge_step: int):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        logdir = run_dir / "tensorboard"
        logdir.mkdir(exist_ok=True)
        # The suffix: tensorboardX names a file by the second it opened it, so a rerun within that
        # second would overwrite the file before it.
        self._w = EventsWriter(str(logdir / "events"), filename_suffix=f".{time.time_ns()}")
        self.path = Path(self._w._file_name)
        self._event = Event
        self._write(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"),
                    Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, *events) -> None:
        if self._w is None:  # closed after a failed write (which stopped the run)
            return
        try:
            for e in events:
                self._w.write_event(e)
            self._w.flush()
        except OSError:
            self.close()  # closes the file: nothing is retried (and fails again) at exit
            raise

    def log(self, step: int, scalars: dict) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
        self._write(self._event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def samples(self, step: int, rows: list[dict]) -> None:
        from tensorboardX.summary import text

        self._write(self._event(wall_time=time.time(), step=step, summary=text("samples", _markdown(rows))))

    def close(self) -> None:
        w, self._w = self._w, None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass  # the write that failed was reported; the file is closed all the same


class Wandb:
    """A Weights & Biases run named after the run directory (project: ``WANDB_PROJECT``, default
    ``jaxalign``; files under ``WANDB_DIR``, default the run directory). ``WANDB_MODE=offline``
    works without network, as always with wandb."""

    def __init__(self, run_dir: Path, config: dict | None):
        import wandb

        self._wandb = wandb
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "jaxalign"), name=run_dir.name,
                               dir=os.environ.get("WANDB_DIR") or str(run_dir), config=config or {})

    def log(self, step: int, scalars: dict) -> None:
        self._run.log(dict(scalars), step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=_table_rows(rows))
        self._run.log({"samples": table}, step=step)

    def close(self) -> None:
        self._run.finish()


class Trackio:
    """A Trackio run (wandb's API, stored locally; project ``TRACKIO_PROJECT``, default
    ``jaxalign``). Through the module-level calls, the API every trackio version has."""

    def __init__(self, run_dir: Path, config: dict | None):
        import trackio

        self._t = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "jaxalign"), name=run_dir.name, config=config or {})

    def log(self, step: int, scalars: dict) -> None:
        self._t.log(dict(scalars), step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        try:  # trackio.Table takes a pandas DataFrame; older trackio versions have no tables
            import pandas

            table = self._t.Table(dataframe=pandas.DataFrame(_table_rows(rows), columns=list(SAMPLE_COLUMNS)))
        except (ImportError, AttributeError):
            return
        self._t.log({"samples": table}, step=step)

    def close(self) -> None:
        self._t.finish()


class Mlflow:
    """An MLflow run (tracking URI: ``MLFLOW_TRACKING_URI``, as MLflow reads it; experiment:
    ``MLFLOW_EXPERIMENT_NAME``, default ``jaxalign``) named after the run directory, with the
    config as parameters. Through ``MlflowClient``, so no global "active run" is left behind."""

    def __init__(self, run_dir: Path, config: dict | None):
        from mlflow import MlflowClient

        self._c = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "jaxalign")
        exp = self._c.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self._c.create_experiment(name)
        self._id = self._c.create_run(exp_id, run_name=run_dir.name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in _flat(config or {}).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self._c.log_batch(self._id, params=params[i:i + 100])

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._c.log_batch(self._id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def samples(self, step: int, rows: list[dict]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        self._c.log_text(self._id, text, f"samples/step_{step:07d}.jsonl")

    def close(self) -> None:
        self._c.set_terminated(self._id)


def open_trackers(names, run_dir: str | Path, resume_step: int | None = None, config: dict | None = None) -> list:
    """Start the trackers ``names`` (see :func:`parse_report_to`) for ``run_dir``; ``config``: the
    resolved run config, recorded where the backend keeps parameters."""
    run_dir = Path(run_dir)
    out = []
    try:
        for name in parse_report_to(names):
            if name == "tensorboard":
                out.append(TensorBoard(run_dir, purge_step=0 if resume_step is None else resume_step + 1))
            else:
                out.append({"wandb": Wandb, "trackio": Trackio, "mlflow": Mlflow}[name](run_dir, config))
    except BaseException:
        for t in out:  # the ones already started end now, not at interpreter exit
            t.close()
        raise
    return out
