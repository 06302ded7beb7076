"""Resuming a real run (``jaxalign sft`` subprocesses on the tiny config) after its newest
checkpoint was damaged, or after a kill in the middle of a checkpoint save: the run reports the
damage in one line, resumes from the last complete checkpoint and finishes with every step
logged once; with no usable checkpoint it exits 2 and leaves the run directory as it was."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import textwrap

import pytest

from tests import procenv
from tests.train.test_loop import ROOT, TIMEOUT, Run, argv, checkpoint_steps, env, snapshot, train_rows  # noqa: F401

SHORT = ("train.steps=3", "train.save_every=1", "train.keep_checkpoints=5", "train.save_final=false")


def _array_files(step_dir):
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory, env):  # noqa: F811
    run = Run(tmp_path_factory.mktemp("three") / "run", env, *SHORT)
    assert run.wait() == 0, run.stderr()[-3000:]
    assert checkpoint_steps(run.run_dir) == [1, 2, 3]
    return run.run_dir


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(three_steps, env, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    for p in _array_files(run_dir / "checkpoints" / "3"):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated, as by a full disk
    rerun = Run(run_dir, env, *SHORT[1:], "train.steps=4")  # --quiet: the warning still prints
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    warnings = [l for l in rerun.stderr().splitlines() if l.startswith("warning: ")]
    assert len(warnings) == 1, rerun.stderr()[-3000:]
    assert warnings[0].startswith("warning: checkpoint step 3 is damaged (ValueError: OUT_OF_RANGE")
    assert warnings[0].endswith(f"moved to {run_dir / 'checkpoints.damaged' / '3'}, resuming from step 2")
    assert "Traceback" not in rerun.stderr()
    assert json.loads(rerun.stdout().splitlines()[-1])["steps"] == 4
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3, 4]  # step 3 logged again, once
    assert checkpoint_steps(run_dir) == [1, 2, 3, 4]


def test_no_usable_checkpoint_exits_2_and_changes_nothing(three_steps, env, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    shutil.copytree(three_steps, run_dir)
    for s in (1, 2, 3):
        (run_dir / "checkpoints" / str(s) / "meta" / "metadata").write_text("{torn")
    before = snapshot(run_dir)
    rerun = Run(run_dir, env, *SHORT)
    assert rerun.wait() == 2
    err = [l for l in rerun.stderr().splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir / 'checkpoints'}: no usable checkpoint "
                                               "(step 3: JSONDecodeError"), err
    assert snapshot(run_dir) == before and not (run_dir / "checkpoints.damaged").exists()


# Runs `jaxalign sft` with Orbax's final rename (the commit of a checkpoint) replaced by SIGKILL
# for one step: the process dies with that step fully written but not committed ("step"), or
# with its train state written and its meta not ("item").
_KILL_AT_COMMIT = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity

    step, where = sys.argv[1], sys.argv[2]
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        final = self._final_path
        if (where == "step" and final.name == step) or (
                where == "item" and final.name == "state" and final.parent.name.startswith(step + ".")):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    from jaxalign.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("where", ["step"])
def test_a_kill_during_a_save_resumes_from_the_last_complete_checkpoint(env, tmp_path, where):  # noqa: F811
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-c", _KILL_AT_COMMIT, "3", where, *argv(run_dir, *SHORT, "train.steps=4")]
    proc = procenv.run(cmd, cwd=ROOT, env=env, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names[:2] == ["1", "2"] and len(names) == 3 and names[2].startswith("3.orbax-checkpoint-tmp"), names
    rerun = Run(run_dir, env, *SHORT, "train.steps=4", quiet=False)
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert f"resumed from {run_dir / 'checkpoints'} at step 2" in rerun.stderr()
    assert "warning:" not in rerun.stderr()  # an uncommitted save is not damage: it never existed
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3, 4]
    assert checkpoint_steps(run_dir) == [1, 2, 3, 4]
