"""The training loop as a user meets it: a run killed with SIGKILL at any step and rerun ends
bit-exactly where an uninterrupted run ends; SIGTERM / SIGINT save a checkpoint and exit with
128 + the signal number; a kill during a checkpoint save leaves the previous one usable; a rerun
with bad input or a mismatched config leaves the run directory as it was; metrics.jsonl never
repeats or skips a step.

The runs are subprocesses of ``python -m jaxalign.cli sft`` on the tiny config, on 2 simulated
devices (sharded state and checkpoints; the device count is not what these tests are about, see
tests/procenv.py). They share the session's JAX persistent compilation cache (same programs,
compiled once), so each one takes seconds.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.train.metrics import MetricsWriter, read_metrics
from tests.multiproc import wait_until
from tests.procenv import HANG_S, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16
# One padded length (buckets: [128]) so every step runs one compiled program; no eval, plots or
# trackers (the disk-full tests size their tmpfs for metrics.jsonl and the checkpoints alone).
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", "train.eval_every=0", "data.eval_fraction=0",
             "data.buckets=[128]", "train.plots=false", "optim.warmup_steps=2", "train.report_to=none"]


def argv(run_dir, *extra: str, quiet: bool = True) -> list[str]:
    """``jaxalign sft`` arguments (options first: argparse takes the key=value list last)."""
    return (["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run_dir)]
            + (["--quiet"] if quiet else []) + OVERRIDES + list(extra))
TIMEOUT = HANG_S


@pytest.fixture(scope="module")
def env():
    return subprocess_env()


class Run:
    """One ``jaxalign sft`` subprocess writing into ``run_dir`` (stdout/stderr to files beside it)."""

    def __init__(self, run_dir: Path, env: dict, *extra: str, quiet: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.out_path = self.run_dir.parent / f"{self.run_dir.name}.{time.monotonic_ns()}.out"
        self.err_path = self.out_path.with_suffix(".err")
        cmd = [sys.executable, "-m", "jaxalign.cli", *argv(self.run_dir, *extra, quiet=quiet)]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)

    def wait(self, timeout=TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def wait_for(self, condition, what: str, timeout=TIMEOUT):
        wait_until(condition, [self.proc], what, lambda: self.stderr()[-3000:], timeout)

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Completed checkpoints (Orbax renames a step's temporary directory to ``<step>`` when done)."""
    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name)) if d.is_dir() else []


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]


def assert_same_run(run_dir: Path, ref_dir: Path):
    """Bit-exact: the same final safetensors bytes and the same logged numbers at every step."""
    rows, ref = train_rows(run_dir), train_rows(ref_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step missing or repeated
    for r, q in zip(rows, ref):
        for k in ("loss", "grad_norm", "lr", "nll"):
            assert r[k] == q[k], (r["step"], k, r[k], q[k])
    got = (run_dir / "final" / "model.safetensors").read_bytes()
    assert got == (ref_dir / "final" / "model.safetensors").read_bytes()


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted run (checkpoint every step, as the killed run below)."""
    run = Run(tmp_path_factory.mktemp("ref") / "run", env, "train.save_every=1")
    assert run.wait() == 0, run.stderr()[-3000:]
    # --quiet: no progress bar, only warnings would reach stderr.
    assert "loss=" not in run.stderr() and "step/s" not in run.stderr() and "\r" not in run.stderr()
    summary = json.loads(run.stdout().splitlines()[-1])
    assert summary["steps"] == STEPS and summary["stopped"] is False
    assert checkpoint_steps(run.run_dir)[-1] == STEPS
    return run.run_dir


def test_sigkill_at_any_step_then_rerun_is_bit_exact(reference, env, tmp_path):
    run = Run(tmp_path / "run", env, "train.save_every=1")
    # Somewhere in the middle (a step, a save, a metrics write): after a random step's
    # checkpoint, an event rather than a time, so a fast machine cannot finish the run first.
    k = random.randint(1, STEPS - 4)
    run.wait_for(lambda: checkpoint_steps(run.run_dir)[-1:] >= [k], f"the checkpoint of step {k}")
    run.proc.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    done = checkpoint_steps(run.run_dir)
    assert done and done[-1] < STEPS and not (run.run_dir / "final").exists(), done
    rerun = Run(run.run_dir, env, "train.save_every=1")
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert_same_run(run.run_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_a_rerun_resumes(reference, env, tmp_path, sig):
    # No periodic checkpoints: the only one is the one the signal makes.
    run = Run(tmp_path / "run", env, quiet=False)
    run.wait_for(lambda: (run.run_dir / "metrics.jsonl").exists()
                 and len(train_rows(run.run_dir)) >= 3, "three logged steps")
    run.proc.send_signal(sig)
    assert run.wait() == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    summary = json.loads(run.stdout().splitlines()[-1])
    k = summary["steps"]
    assert summary["stopped"] is True and 3 <= k < STEPS
    assert checkpoint_steps(run.run_dir) == [k]
    assert not (run.run_dir / "final").exists()
    err = run.stderr()
    assert f"stopped by signal at step {k}; checkpoint saved, rerun to resume" in err
    assert "Traceback" not in err
    # The progress bar (not --quiet) shows the loss and tokens/s.
    assert re.search(r"loss=\d+\.\d{4}", err) and re.search(r"tok_s=\d+", err)
    # The checkpoint is complete and restorable on its own (no template): step k, finite params.
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(run.run_dir / "checkpoints")
    out = mgr.restore(k, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  meta=ocp.args.JsonRestore()))
    mgr.close()
    assert int(out["state"]["step"]) == k and out["meta"]["step"] == k
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out["state"]["params"]))
    assert [r["step"] for r in train_rows(run.run_dir)][-1] == k
    # The same command again resumes at step k and ends exactly where the uninterrupted run ends.
    rerun = Run(run.run_dir, env, quiet=False)
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert f"resumed from {run.run_dir / 'checkpoints'} at step {k}" in rerun.stderr()
    assert_same_run(run.run_dir, reference)


_SAVE_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from jaxalign.train.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], keep=3)
    ck.save(1, {"w": jnp.full((4,), 1.0), "x": jnp.zeros((8,))}, {"step": 1})
    ck.wait()
    # A 256 MB step 2: save() returns while the write goes on in the background. Die once its
    # temporary directory exists (waiting for that event, not for a time: CI once killed the
    # process before Orbax had created it, and the test had nothing half-written to look at).
    ck.save(2, {"w": jnp.full((4,), 2.0), "x": jnp.ones((64, 1024, 1024))}, {"step": 2})
    import pathlib, time
    d, deadline = pathlib.Path(sys.argv[1]), time.monotonic() + 120
    while not any(p.name.startswith("2") for p in d.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(env, tmp_path):
    import jax.numpy as jnp

    from jaxalign.train.checkpoint import Checkpointer

    d = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", _SAVE_THEN_DIE, str(d)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(p.name for p in d.iterdir())
    if "2" in names:
        pytest.skip("the 256 MB save finished before the kill; nothing interrupted")
    assert names[0] == "1" and names[1].startswith("2.") and "tmp" in names[1], names
    ck = Checkpointer(d)
    assert ck.latest_step() == 1  # the half-written step 2 is not a checkpoint
    state, meta = ck.restore({"w": jnp.zeros((4,)), "x": jnp.zeros((8,))})
    assert meta == {"step": 1} and np.asarray(state["w"]).tolist() == [1.0] * 4
    ck.save(2, {"w": jnp.full((4,), 3.0), "x": jnp.zeros((8,))}, {"step": 2})  # saving again works
    ck.close()
    assert Checkpointer(d).latest_step() == 2


def test_rerun_with_bad_input_leaves_the_run_dir_untouched(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = snapshot(run_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": 5}\n')
    # Bad data: found before anything is written.
    rc = main(argv(run_dir, f"data.train={bad}", "train.save_every=1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == f"error: {bad}: row 1 (0-based): field 'completion': expected a string or a list " \
                      "of messages, got int"
    assert snapshot(run_dir) == before
    # A config the checkpoint does not fit (another model size): an error naming the checkpoint,
    # and config.yaml, metrics.jsonl and the checkpoints stay as they were.
    rc = main(argv(run_dir, "train.save_every=1", "model.config.hidden_size=32",
                   "model.config.intermediate_size=64"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {run_dir / 'checkpoints' / str(STEPS)}: this checkpoint does not fit "
                             "the current config")
    assert snapshot(run_dir) == before


def test_metrics_writer_resume_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)] + [{"step": 4, "eval/loss": 0.5}]
    rows.sort(key=lambda r: r["step"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')  # torn by a kill
    w = MetricsWriter(tmp_path, resume_step=4, tensorboard=False)
    assert read_metrics(path) == [r for r in rows if r["step"] <= 4]
    w.write(4, {"loss": 9.0})           # already logged for step 4: not written twice
    w.write(4, {"loss": 0.5}, prefix="eval/")
    w.write(5, {"loss": 0.2})
    w.write(5, {"loss": 0.1}, prefix="eval/")
    w.close()
    got = read_metrics(path)
    assert [(r["step"], sorted(r)) for r in got] == [
        (1, ["loss", "step"]), (2, ["loss", "step"]), (3, ["loss", "step"]), (4, ["loss", "step"]),
        (4, ["eval/loss", "step"]), (5, ["loss", "step"]), (5, ["eval/loss", "step"])]
    assert got[3]["loss"] == 0.25 and got[5]["loss"] == 0.2
    # A fresh run (no checkpoint) starts a new file.
    MetricsWriter(tmp_path, resume_step=None, tensorboard=False).close()
    assert read_metrics(path) == []
