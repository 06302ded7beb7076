"""A run whose disk fills up: one ``error: no space left on device while writing PATH (...)``
line and exit code 28, no traceback (none from Orbax's threads either), the last complete
checkpoint kept (a failed save's temporary directory removed), whole rows in metrics.jsonl, no
half-written final/, and a rerun with space resumes from the last complete checkpoint.

The full disk is a small tmpfs mounted in an unprivileged user + mount namespace (``unshare``);
where that is not allowed the subprocess tests skip. Its size is chosen so that each run fails
where the test means it to: one checkpoint of the tiny model takes ~1.09 MB on tmpfs, its
final/ export ~0.37 MB, config.yaml one 4 KiB page and a metrics row ~230 bytes. The namespace,
and the tmpfs with it, ends with the run, so the run directory is copied out first.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys

import pytest

from jaxalign.errors import NoSpaceLeft
from jaxalign.train import metrics as metrics_mod
from jaxalign.train.metrics import MetricsWriter
from tests import procenv
from tests.train.test_loop import ROOT, TIMEOUT, Run, argv, checkpoint_steps, env, train_rows  # noqa: F401

_UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]

# In the namespace: mount the tmpfs, run the command, copy the run directory out, exit with the
# command's code (99: the mount itself failed).
_ON_TMPFS = """
size=$1 mnt=$2 dest=$3; shift 3
mount -t tmpfs -o size="$size" tmpfs "$mnt" || exit 99
"$@"
rc=$?
if [ -e "$mnt/run" ]; then cp -a "$mnt/run" "$dest"; fi
exit $rc
"""


@pytest.fixture(scope="module")
def tmpfs_ok(tmp_path_factory):
    """Skip unless an unprivileged user + mount namespace may mount a tmpfs here."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command (util-linux) to make a small full disk")
    mnt = tmp_path_factory.mktemp("probe")
    probe = subprocess.run([*_UNSHARE, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(mnt)],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()[:200]}")


def run_on_tmpfs(tmp_path, size: str, env, *overrides: str):  # noqa: F811
    """``jaxalign sft`` (tiny config, --quiet) with its run directory on a tmpfs of ``size``;
    returns (the process, the run directory's mount path, its copy after the run)."""
    mnt, copy = tmp_path / "disk", tmp_path / "run"
    mnt.mkdir()
    cmd = [*_UNSHARE, "sh", "-c", _ON_TMPFS, "sh", size, str(mnt), str(copy),
           sys.executable, "-m", "jaxalign.cli", *argv(mnt / "run", *overrides)]
    proc = procenv.run(cmd, cwd=ROOT, env=env, timeout=TIMEOUT)
    if proc.returncode == 99:
        pytest.skip(f"tmpfs mount failed: {proc.stderr.strip()[:200]}")
    return proc, mnt / "run", copy


def one_error_line(proc) -> str:
    assert proc.returncode == 28, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr[-6000:]  # no traceback, no Orbax log records
    return lines[0]


def whole_rows(path) -> list[dict]:
    """Every line of a metrics.jsonl, each of which must be one whole JSON row."""
    text = path.read_text()
    assert text.endswith("\n"), text[-300:]
    return [json.loads(line) for line in text.splitlines()]


SAVE = ("train.steps=3", "train.save_every=1", "train.keep_checkpoints=5", "train.save_final=false")


@pytest.fixture(scope="module")
def failed_save(tmpfs_ok, tmp_path_factory, env):  # noqa: F811
    # 1600 KiB: the checkpoint of step 1 fits, the one of step 2 does not.
    return run_on_tmpfs(tmp_path_factory.mktemp("save"), "1600k", env, *SAVE)


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint(failed_save):
    proc, run_dir, copy = failed_save
    assert one_error_line(proc) == (
        f"error: no space left on device while writing {run_dir / 'checkpoints' / '2'} "
        "(checkpoint of step 2 not saved; free space and rerun to resume from step 1)")
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["1"]  # no *.orbax-checkpoint-tmp
    assert [r["step"] for r in whole_rows(copy / "metrics.jsonl")][:2] == [1, 2]


def test_a_rerun_with_space_resumes_from_the_last_checkpoint(failed_save, env, tmp_path):  # noqa: F811
    _, _, copy = failed_save
    run_dir = tmp_path / "run"
    shutil.copytree(copy, run_dir)
    rerun = Run(run_dir, env, *SAVE, quiet=False)
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert f"resumed from {run_dir / 'checkpoints'} at step 1" in rerun.stderr()
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3]  # steps 2, 3 logged again, once
    assert checkpoint_steps(run_dir) == [1, 2, 3]


def test_a_full_disk_during_the_export_leaves_no_final_dir(tmpfs_ok, env, tmp_path):  # noqa: F811
    # 1350 KiB: the checkpoint of step 3 (the only one) fits, final/ next to it does not.
    proc, run_dir, copy = run_on_tmpfs(tmp_path, "1350k", env, "train.steps=3", "train.save_every=0",
                                       "train.keep_checkpoints=1")
    assert one_error_line(proc) == (
        f"error: no space left on device while writing {run_dir / 'final'} (final model not written; "
        "the checkpoint of step 3 is saved: free space and rerun to export it)")
    assert sorted(p.name for p in copy.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert checkpoint_steps(copy) == [3]


def test_a_full_disk_during_a_metrics_row_keeps_whole_rows(tmpfs_ok, env, tmp_path):  # noqa: F811
    # 12 KiB: config.yaml takes one page, metrics.jsonl fills the other two after ~35 rows.
    proc, run_dir, copy = run_on_tmpfs(tmp_path, "12k", env, "train.steps=80", "train.save_every=0")
    line = one_error_line(proc)
    m = re.fullmatch(rf"error: no space left on device while writing {re.escape(str(run_dir / 'metrics.jsonl'))} "
                     r"\(the row of step (\d+) not written; free space and rerun to start again from step 0\)",
                     line)
    assert m, line
    rows = whole_rows(copy / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, int(m.group(1))))


def test_a_row_that_does_not_fit_is_cut_off_again(tmp_path, monkeypatch):
    """The disk fills up in the middle of a row (a short write, then ENOSPC): the file keeps
    the rows before it, whole, and the next row (once there is space) starts on its own line."""
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": 1.0})
    real_write = metrics_mod.os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # what still fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics_mod.os, "write", full_disk)
    with pytest.raises(NoSpaceLeft) as e:
        w.write(2, {"loss": 0.5})
    assert str(e.value) == (f"no space left on device while writing {tmp_path / 'metrics.jsonl'} "
                            "(the row of step 2 not written; free space and rerun)")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
    monkeypatch.setattr(metrics_mod.os, "write", real_write)
    w.write(2, {"loss": 0.5})
    w.close()
    assert whole_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]


def test_a_resume_rewrite_that_does_not_fit_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    before = path.read_text()

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(metrics_mod.Path, "write_text", full_disk)
    with pytest.raises(NoSpaceLeft, match=r"metrics\.jsonl\.tmp \(rows up to step 2 not rewritten"):
        MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    assert path.read_text() == before and not (tmp_path / "metrics.jsonl.tmp").exists()
