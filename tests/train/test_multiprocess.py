"""A run of two processes on one machine (4 simulated CPU devices each, a localhost coordinator)
trains exactly as one process with 8 devices and the same mesh: the same logged numbers at every
step (to float tolerance: the cross-process sums go through gloo in another order), the same
token counts, the same exported model; process 0 alone prints and logs; a checkpoint written
by both processes together is restored by both and the run continues as the reference did.

The reference is an in-test run of ``jaxalign dpo`` in this (8-device) pytest process; the two
processes are subprocesses of ``python -m jaxalign.cli dpo --coordinator ... --process-id i``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.cli import main
from jaxalign.train.metrics import read_metrics
from tests.multiproc import Processes
from tests.procenv import HANG_S, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "dpo_tiny.yaml"
STEPS = 4
# One padded length (buckets: [128]) so every step runs one compiled program; no plots. 4 of the
# 64 pairs held out, evaluated at steps 2 and 4: an eval batch of 4 rows (2 per process) does not
# split over 8 devices, so it is replicated (each process gathers the other's rows).
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", "train.save_every=2", "data.buckets=[128]",
             "train.plots=false", "data.eval_fraction=0.0625", "train.eval_every=2"]
TIMEOUT = HANG_S
NOT_COMPARED = ("step_time", "tokens_per_s")  # timings (tokens are compared, see below)
# Step functions of the reward margins (compared themselves): a margin within float noise of 0
# (all of them at step 1, where the policy is the reference) may flip them.
STEP_FUNCTIONS = ("accuracy", "rewards/accuracies")
pytestmark = pytest.mark.slow


def argv(run_dir: Path, *extra: str, quiet: bool = True) -> list[str]:
    return (["dpo", "--config", str(CONFIG), "--run-dir", str(run_dir)]
            + (["--quiet"] if quiet else []) + list(extra) + OVERRIDES)


@pytest.fixture(scope="module")
def env():
    # 4 devices per process: 2 x 4 is the 8-device mesh of the in-process reference (the count is
    # what this test is about). The session's compilation cache: the resumed run reuses the
    # first run's programs.
    return subprocess_env(devices=4)


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/loss" in r]


def assert_same_metrics(run_dir: Path, ref_dir: Path) -> None:
    rows, ref = train_rows(run_dir), train_rows(ref_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    for r, q in zip(rows, ref):
        assert set(r) == set(q), r["step"]
        for k in set(q) - {"step", *NOT_COMPARED, *STEP_FUNCTIONS}:
            assert math.isclose(r[k], q[k], rel_tol=1e-5, abs_tol=1e-5), (r["step"], k, r[k], q[k])
        # log_every=1: tokens of the step = tokens_per_s * step_time (each process counts its
        # own rows; the log sums them over processes).
        tokens = r["tokens_per_s"] * r["step_time"]
        assert tokens == pytest.approx(q["tokens_per_s"] * q["step_time"], rel=1e-4), r["step"]
    rows, ref = eval_rows(run_dir), eval_rows(ref_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [2, 4]
    for r, q in zip(rows, ref):
        assert set(r) == set(q)
        for k in set(q) - {"step", *(f"eval/{m}" for m in STEP_FUNCTIONS)}:
            assert math.isclose(r[k], q[k], rel_tol=1e-5, abs_tol=1e-5), (r["step"], k, r[k], q[k])


def assert_same_export(run_dir: Path, ref_dir: Path) -> None:
    got, want = (load_file(str(d / "final" / "model.safetensors")) for d in (run_dir, ref_dir))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def checkpoint_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """(two-process run dir, its Processes, one-process reference dir)."""
    if jax.device_count() != 8 or jax.process_count() != 1:
        pytest.skip("the reference needs this pytest process on 8 CPU devices (tests/conftest.py)")
    base = tmp_path_factory.mktemp("mp")
    two = Processes(base / "two", env, argv=argv)  # starts now; the reference below runs meanwhile
    assert main(argv(base / "ref")) == 0
    two.succeed()
    return base / "two", two, base / "ref"


def test_two_processes_train_as_one_with_eight_devices(runs, capsys):
    run_dir, two, ref_dir = runs
    assert_same_metrics(run_dir, ref_dir)
    assert_same_export(run_dir, ref_dir)
    assert checkpoint_steps(run_dir) == [2, 4]
    assert (run_dir / "config.yaml").read_text() == (ref_dir / "config.yaml").read_text().replace(
        str(ref_dir), str(run_dir))
    summary = json.loads(two.stdout(0).splitlines()[-1])  # process 0 reports, process 1 is silent
    assert summary["steps"] == STEPS and summary["stopped"] is False
    assert two.stdout(1) == ""
    assert not list(run_dir.parent.glob(".final.tmp-*"))  # the export finished (one writer)


def test_both_processes_resume_from_the_checkpoint_they_wrote(runs, env):
    run_dir, _, ref_dir = runs
    resumed = run_dir.parent / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")  # as if killed after step 3
    shutil.rmtree(resumed / "final")
    again = Processes(resumed, env, argv=argv, quiet=False)
    again.succeed()
    assert f"resumed from {resumed / 'checkpoints'} at step 2" in again.stderr(0)
    assert "resumed from" not in again.stderr(1)  # process 1 restores too, but only 0 logs
    # Steps 3-4 come from the restored params, optimizer and data position of both processes:
    # each holds half the parameter shards and loads half of every batch.
    assert_same_metrics(resumed, ref_dir)
    assert_same_export(resumed, ref_dir)
    assert checkpoint_steps(resumed) == [2, 4]


def test_a_mesh_that_is_not_every_device_is_one_line_exit_2(tmp_path, env):
    procs = Processes(tmp_path / "run", env, "mesh.fsdp=2", "mesh.data=1", argv=argv)
    codes = procs.wait()
    assert codes == [2, 2], procs.report()
    for i in range(2):
        lines = [x for x in procs.stderr(i).splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "mesh" in lines[0] and "2 processes x 4 devices" in lines[0], procs.report()
        assert "Traceback" not in procs.stderr(i)


def test_multi_process_options_must_come_together(capsys):
    assert main(["dpo", "--config", str(CONFIG), "--coordinator", "localhost:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-processes, --process-id missing" in err[0]
