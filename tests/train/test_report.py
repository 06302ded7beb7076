"""train.report_to: each backend through its own library, offline: TensorBoard event files (read
back here), wandb in offline mode, MLflow on a file store, Trackio locally (each skipped where
its library is not installed). The value's checks: tests/config/test_report_to.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from jaxalign.train.metrics import MetricsWriter

SAMPLES = [{"prompt": "Say a", "completion": "a | b\nc", "reward": 0.5}, {"prompt": "q", "completion": "", "reward": -1}]


# -- each backend, offline ---------------------------------------------------------------------------

def _log_a_run(run_dir: Path, report_to, **kw):
    run_dir.mkdir(parents=True, exist_ok=True)  # the loop's check_run_dir creates it in a run
    w = MetricsWriter(run_dir, report_to=report_to, config={"train": {"lr": 0.1}, "algorithm": "sft"}, **kw)
    w.write(0, {"reward": -1.0}, prefix="eval/")
    w.write(1, {"loss": 2.0, "lr": 0.1})
    w.write(2, {"loss": 1.5, "lr": float("nan")})
    w.samples(2, SAMPLES)
    w.close()


def _tb_events(logdir: Path) -> list:
    """Every Event in the TFRecord files of ``logdir`` (length, CRC, proto, CRC per record)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event()
            ev.ParseFromString(data[i + 12:i + 12 + n])
            out.append(ev)
            i += 12 + n + 4
    return out


def test_tensorboard_event_files_hold_the_scalars_and_the_samples(tmp_path):
    _log_a_run(tmp_path, "tensorboard")
    events = _tb_events(tmp_path / "tensorboard")
    scalars = [(e.step, v.tag, round(v.simple_value, 6)) for e in events for v in e.summary.value
               if v.WhichOneof("value") == "simple_value"]
    assert scalars == [(0, "eval/reward", -1.0), (1, "loss", 2.0), (1, "lr", 0.1), (2, "loss", 1.5)]  # no NaN
    texts = [(e.step, v.tag, v.tensor.string_val[0].decode()) for e in events for v in e.summary.value
             if v.tag.startswith("samples")]
    assert len(texts) == 1 and texts[0][0] == 2
    assert "| Say a | a \\| b<br>c | 0.5 |" in texts[0][2]


def test_tensorboard_hides_the_steps_a_resumed_run_logs_again(tmp_path):
    _log_a_run(tmp_path, "tensorboard")
    w = MetricsWriter(tmp_path, resume_step=1, report_to="tensorboard")
    w.close()
    purges = [e.step for e in _tb_events(tmp_path / "tensorboard") if e.file_version]
    assert 2 in purges  # TensorBoard drops earlier events from step 2 on


def test_a_full_disk_under_tensorboard_is_one_error_and_no_hang(tmp_path, monkeypatch):
    import errno

    from tensorboardX.event_file_writer import EventsWriter

    from jaxalign.errors import NoSpaceLeft

    w = MetricsWriter(tmp_path, report_to="tensorboard", rerun=lambda: "rerun to resume from step 1")
    w.write(1, {"loss": 2.0})
    events = w._trackers[0].path

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EventsWriter, "flush", full)
    with pytest.raises(NoSpaceLeft) as e:
        w.write(2, {"loss": 1.5})
    assert str(e.value) == (f"no space left on device while writing {events} (the TensorBoard data of step 2 "
                            "not written; free space and rerun to resume from step 1)")
    w.write(3, {"loss": 1.0})  # the tracker is closed: nothing more goes to it, nothing blocks
    w.close()
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # An offline run keeps its history in wandb's own binary format: the calls are recorded on
    # their way into wandb (which still stores them), the table is read back from its JSON file.
    calls, real_log, real_init = [], wandb.Run.log, wandb.init
    monkeypatch.setattr(wandb.Run, "log", lambda self, data, step=None, **k: (
        calls.append((step, {n: v if isinstance(v, float) else type(v).__name__ for n, v in data.items()})),
        real_log(self, data, step=step, **k))[1])
    inits = []
    monkeypatch.setattr(wandb, "init", lambda **k: inits.append(k) or real_init(**k))
    _log_a_run(tmp_path / "run", "wandb")
    assert calls == [(0, {"eval/reward": -1.0}), (1, {"loss": 2.0, "lr": 0.1}), (2, {"loss": 1.5}),
                     (2, {"samples": "Table"})]
    (init,) = inits
    assert init["name"] == "run" and init["config"] == {"train": {"lr": 0.1}, "algorithm": "sft"}
    (run,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    (table,) = (run / "files" / "media" / "table").glob("samples_2_*.table.json")
    assert json.loads(table.read_text()) == {"columns": ["step", "prompt", "completion", "reward"],
                                             "data": [[2, "Say a", "a | b\nc", 0.5], [2, "q", "", -1.0]]}
    assert list(run.glob("run-*.wandb"))


def test_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "jaxalign-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    _log_a_run(tmp_path / "run", "mlflow")
    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("jaxalign-test").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
    assert run.data.params["train.lr"] == "0.1"
    (art,) = c.list_artifacts(run.info.run_id, "samples")
    text = Path(c.download_artifacts(run.info.run_id, art.path, str(tmp_path / "dl"))).read_text()
    assert [json.loads(x)["completion"] for x in text.splitlines()] == ["a | b\nc", ""]


def test_trackio_local(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "jaxalign-test")
    _log_a_run(tmp_path / "run", "trackio")
    assert any((tmp_path / "trackio").rglob("*")), "trackio stored nothing under TRACKIO_DIR"
