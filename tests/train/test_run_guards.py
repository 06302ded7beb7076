"""Nothing lost, nothing silently wrong (``jaxalign sft`` subprocesses on the tiny config): one
run per run directory, a resume only of the same run, checksummed checkpoints, signals at any
moment, and the small things (stale export directories, ``config.yaml`` kept until a step
succeeds, ``error:`` on a line of its own)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxalign.io.run_lock import LOCK_NAME, RunLock
from tests import procenv
from tests.train.test_loop import ROOT, TIMEOUT, Run, checkpoint_steps, env, snapshot  # noqa: F401

SHORT = ("train.steps=2", "train.save_every=1", "train.keep_checkpoints=5", "train.save_final=false")


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, env):  # noqa: F811
    run = Run(tmp_path_factory.mktemp("two") / "run", env, *SHORT)
    assert run.wait() == 0, run.stderr()[-3000:]
    assert checkpoint_steps(run.run_dir) == [1, 2]
    assert not (run.run_dir / LOCK_NAME).exists()  # released at the end
    return run.run_dir


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _one_error(run, code=2) -> str:
    assert run.wait() == code, run.stderr()[-3000:]
    lines = [l for l in run.stderr().splitlines() if l.strip()]
    assert len(lines) == 1, run.stderr()[-3000:]
    return lines[0]


# --- one run per run directory ----------------------------------------------------------------

def test_a_second_launch_on_a_locked_run_dir_exits_2_naming_the_owner(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    before = snapshot(run_dir)
    with RunLock(run_dir):  # this test process is "the first run"
        line = _one_error(Run(run_dir, env, *SHORT[1:], "train.steps=3"))
    assert line.startswith(f"error: run directory {run_dir} is in use by another jaxalign run (pid {os.getpid()} on host ")
    assert line.endswith("wait for it to finish, or use another run_dir")
    assert snapshot(run_dir) == before  # nothing resumed, nothing written


def test_a_dead_owners_lock_is_taken_over_and_an_unused_new_dir_is_removed(tmp_path):
    run_dir = tmp_path / "a" / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from jaxalign.io.run_lock import RunLock
        RunLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=procenv.subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match=f"in use by another jaxalign run \\(pid {holder.pid} "):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()  # SIGKILL: no release; the kernel drops the flock
        holder.wait()
    assert (run_dir / LOCK_NAME).exists()  # the stale file stays ...
    lock = RunLock(run_dir).acquire()  # ... and is taken over
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert run_dir.exists() and not (run_dir / LOCK_NAME).exists()  # the holder created it, not us
    fresh = tmp_path / "b" / "c" / "run"
    RunLock(fresh).acquire().release()
    assert not (tmp_path / "b").exists()  # created for the lock, left empty: removed


# --- a resume continues the same run, or nothing happens ---------------------------------------

def test_another_algorithm_on_the_run_dir_is_refused_and_nothing_changes(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    before = snapshot(run_dir)
    cmd = [sys.executable, "-m", "jaxalign.cli", "dpo", "--config", "configs/dpo_tiny.yaml", "--run-dir",
           str(run_dir), "--quiet", "train.steps=3", "train.plots=false"]
    out = procenv.run(cmd, cwd=ROOT, env=env, timeout=TIMEOUT)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0] == f"error: {run_dir}: holds a sft run; `jaxalign dpo` cannot resume it; use a new --run-dir"
    assert snapshot(run_dir) == before


def test_other_data_with_the_same_row_count_is_refused(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    rows = [json.loads(l) for l in (ROOT / "jaxalign/data/shipped/sft_tiny.jsonl").read_text().splitlines()]
    first = next(k for k in ("completion", "response", "text") if k in rows[0])
    rows[0][first] = rows[0][first][::-1]  # one row's text changed, same number of rows
    data = tmp_path / "changed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(run_dir)
    line = _one_error(Run(run_dir, env, *SHORT[1:], "train.steps=3", f"data.train={data}"))
    assert line.startswith(f"error: {run_dir}: the training data differ from the run's (content fingerprint ")
    assert snapshot(run_dir) == before


def test_a_changed_param_dtype_is_refused_unless_asked_for(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    before = snapshot(run_dir)
    line = _one_error(Run(run_dir, env, *SHORT[1:], "train.steps=3", "model.param_dtype=bfloat16"))
    assert line == (f"error: {run_dir}: config key 'model.param_dtype' is bfloat16 but the checkpoint holds "
                    "float32 parameters; set it back, or add train.resume_cast=true to cast them on purpose")
    assert snapshot(run_dir) == before
    rerun = Run(run_dir, env, *SHORT[1:], "train.steps=3", "model.param_dtype=bfloat16", "train.resume_cast=true")
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    warnings = [l for l in rerun.stderr().splitlines() if l.startswith("warning: ")]
    assert warnings == ["warning: casting the checkpoint's float32 parameters to bfloat16 "
                        "(model.param_dtype, train.resume_cast=true)"]
    assert checkpoint_steps(run_dir) == [1, 2, 3]


def test_a_resume_names_the_settings_it_changed(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    rerun = Run(run_dir, env, *SHORT[1:], "train.steps=3", "optim.lr=0.002", quiet=False)
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    resumed = [l for l in rerun.stderr().splitlines() if l.startswith("resumed from ")]
    assert len(resumed) == 1 and resumed[0].endswith("at step 2 (changed: optim.lr 0.003 -> 0.002; "
                                                     "train.steps 2 -> 3)"), rerun.stderr()[-3000:]


# --- checksummed checkpoints -------------------------------------------------------------------

def _largest_array_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def test_a_flipped_bit_in_an_array_file_takes_the_damaged_path(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    sums = json.loads((run_dir / "checkpoints" / "2" / "jaxalign_checksums.json").read_text())
    assert any(k.startswith("state/") for k in sums) and "meta/metadata" in sums
    f = _largest_array_file(run_dir / "checkpoints" / "2")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, inside the array data: Orbax alone restores it silently
    f.write_bytes(bytes(data))
    rerun = Run(run_dir, env, *SHORT[1:], "train.steps=3")
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    warnings = [l for l in rerun.stderr().splitlines() if l.startswith("warning: ")]
    rel = f.relative_to(run_dir / "checkpoints" / "2")
    assert warnings == [f"warning: checkpoint step 2 is damaged (checksum mismatch in {rel}); moved to "
                        f"{run_dir / 'checkpoints.damaged' / '2'}, resuming from step 1"], rerun.stderr()[-3000:]
    assert checkpoint_steps(run_dir) == [1, 2, 3]


# --- signals at any moment ---------------------------------------------------------------------

def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (/proc/<pid>/status SigCgt)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(l for l in text.splitlines() if l.startswith("SigCgt:")).split()[1], 16)
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_exits_128_plus_it_in_one_line(env, tmp_path, sig):  # noqa: F811
    run = Run(tmp_path / "run", env, *SHORT)
    # As soon as the command handles SIGTERM (its first moments: importing JAX, loading, compiling).
    run.wait_for(lambda: _catches(run.proc.pid, signal.SIGTERM), "the SIGTERM handler")
    run.proc.send_signal(sig)
    assert run.wait() == 128 + sig, run.stderr()[-3000:]
    lines = [l for l in run.stderr().splitlines() if l.strip()]
    assert lines == [f"stopped by {signal.Signals(sig).name}: checkpoints on disk are whole; rerun to resume"]
    assert checkpoint_steps(run.run_dir) == [] and not (run.run_dir / LOCK_NAME).exists()


# --- the small things --------------------------------------------------------------------------

def test_a_stale_export_directory_is_removed_on_the_next_start(two_steps, env, tmp_path):  # noqa: F811
    run_dir = _copy(two_steps, tmp_path)
    # ours, io.hf.save_hf's own sibling of ours, and the previous final/ mid-swap
    stale = [run_dir / n for n in (".final.tmp", "..final.tmp.tmp-999999", ".final.old")]
    for d in stale:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "model.safetensors").write_bytes(b"half")
    rerun = Run(run_dir, env, *SHORT[1:], "train.steps=3")
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert [d.name for d in stale if d.exists()] == []


def test_a_run_failing_at_its_first_step_keeps_config_yaml_and_prints_error_on_its_own_line(env, tmp_path):  # noqa: F811
    """GRPO's whole-loop memory plan refuses the resumed run before it writes anything (the
    progress bars of the first run's output are on stderr too)."""
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "jaxalign.cli", "grpo", "--config", "configs/grpo_tiny.yaml", "--run-dir",
            str(run_dir), "train.steps=1", "train.save_every=1", "train.plots=false", "train.save_final=false"]
    first = procenv.run(base + ["--quiet"], cwd=ROOT, env=env, timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    out = procenv.run(base + ["train.steps=2", "optim.lr=0.5", "train.device_memory_limit=1KiB"],
                      cwd=ROOT, env=env, timeout=TIMEOUT)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [l for l in out.stderr.splitlines() if "error: " in l]
    assert len(errors) == 1 and errors[0].startswith("error: the run needs about "), out.stderr[-3000:]
    assert (run_dir / "config.yaml").read_text() == config
