"""Damaged checkpoints: each kind of damage to the newest checkpoint (a deleted, truncated or
bit-flipped array file, garbage in a metadata file, an empty step directory, a NaN) is found on
resume, reported in one line naming the step, and the previous good checkpoint is used; with no
good checkpoint the error changes nothing on disk; a checkpoint of another layout stays the
"does not fit the config" error (no fallback). A state with a NaN is never saved."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.train.checkpoint import Checkpointer


def state_at(step: int, n: int = 256) -> dict:
    """A train-state-like tree whose values say which step wrote it."""
    return {"params": {"w": jnp.full((n,), float(step)), "b": jnp.full((4, 8), -float(step))},
            "step": jnp.int32(step)}


def write_checkpoints(d: Path, steps=(1, 2, 3)) -> None:
    ck = Checkpointer(d, keep=10)
    for s in steps:
        ck.save(s, state_at(s), {"data": {"position": s}, "step": s})
    ck.close()


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _array_files(step_dir: Path) -> list[Path]:
    # OCDBT keeps the array data in state/d/<hash> (and per-process copies under ocdbt.process_*).
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, sorted(step_dir.rglob("*"))
    return files


def _nan_checkpoint(step_dir: Path) -> None:
    # Written with Orbax directly (Checkpointer.save refuses NaN), as an older version could have.
    shutil.rmtree(step_dir)
    bad = state_at(3)
    bad["params"]["w"] = bad["params"]["w"].at[7].set(jnp.nan)
    mgr = ocp.CheckpointManager(step_dir.parent)
    mgr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(bad),
                                        meta=ocp.args.JsonSave({"data": {"position": 3}, "step": 3})))
    mgr.wait_until_finished()
    mgr.close()


def _truncate(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


DAMAGE = {
    # kind: (how to damage step dir 3, a word the one-line report must contain)
    "deleted_array_file": (lambda d: [p.unlink() for p in _array_files(d)], "NOT_FOUND"),
    "truncated_array_file": (lambda d: [_truncate(p) for p in _array_files(d)], "OUT_OF_RANGE"),
    "flipped_bytes": (lambda d: [_flip(p) for p in _array_files(d)], "Error"),
    "garbage_state_metadata": (lambda d: (d / "state" / "_METADATA").write_text("{garbage"), "JSONDecodeError"),
    "garbage_meta_json": (lambda d: (d / "meta" / "metadata").write_text('{"data": '), "JSONDecodeError"),
    "meta_without_data": (lambda d: (d / "meta" / "metadata").write_text('{"step": 3}'), "lacks data"),
    "empty_step_dir": (lambda d: (shutil.rmtree(d), d.mkdir()), "_METADATA"),
    "nan_in_params": (_nan_checkpoint, "NaN or Inf in params/w"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, kind):
    d = tmp_path / "checkpoints"
    write_checkpoints(d)
    damage, word = DAMAGE[kind]
    damage(d / "3")
    lines = []
    ck = Checkpointer(d, keep=10)
    step, state, meta = ck.restore_latest_good(state_at(0), lines.append, needs=("data",))
    assert step == 2 and meta == {"data": {"position": 2}, "step": 2}
    np.testing.assert_array_equal(state["params"]["w"], np.full((256,), 2.0))
    np.testing.assert_array_equal(state["params"]["b"], np.full((4, 8), -2.0))
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("checkpoint step 3 is damaged (") and word in lines[0], lines[0]
    assert lines[0].endswith(f"moved to {tmp_path / 'checkpoints.damaged' / '3'}, resuming from step 2")
    # The damaged step is out of the way: the resumed run can save step 3 again.
    assert ck.all_steps() == [1, 2] and (tmp_path / "checkpoints.damaged" / "3").is_dir()
    ck.save(3, state_at(33), {"data": {"position": 3}, "step": 3})
    ck.close()
    step, state, _ = Checkpointer(d).restore_latest_good(state_at(0), lines.append)
    assert step == 3 and float(state["params"]["w"][0]) == 33.0


def test_two_damaged_checkpoints_are_each_reported(tmp_path):
    d = tmp_path / "checkpoints"
    write_checkpoints(d)
    (d / "3" / "meta" / "metadata").write_text("x")
    for p in _array_files(d / "2"):
        p.unlink()
    lines = []
    step, _, meta = Checkpointer(d).restore_latest_good(state_at(0), lines.append)
    assert step == 1 and meta["step"] == 1
    assert [l.split(" (")[0] for l in lines] == ["checkpoint step 3 is damaged", "checkpoint step 2 is damaged"]


def test_no_good_checkpoint_is_an_error_that_changes_nothing(tmp_path):
    d = tmp_path / "checkpoints"
    write_checkpoints(d, steps=(1, 2))
    for s in (1, 2):
        for p in _array_files(d / str(s)):
            _truncate(p)
    before = snapshot(tmp_path)
    with pytest.raises(JaxalignError) as e:
        Checkpointer(d).restore_latest_good(state_at(0), print)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{d}: no usable checkpoint (step 2: ")
    assert "step 1: " in msg and "new --run-dir" in msg
    assert snapshot(tmp_path) == before and not (tmp_path / "checkpoints.damaged").exists()


def test_another_layout_is_a_mismatch_not_a_fallback(tmp_path):
    d = tmp_path / "checkpoints"
    write_checkpoints(d)
    before = snapshot(tmp_path)
    with pytest.raises(JaxalignError) as e:
        Checkpointer(d).restore_latest_good(state_at(0, n=128), print)  # another model size
    assert str(e.value).startswith(f"{d / '3'}: this checkpoint does not fit the current config "
                                   "(params/w: shape (256,) in the checkpoint, (128,) in the config)")
    extra = dict(state_at(0), extras={"bco_mean": jnp.zeros(())})  # another algorithm's state
    with pytest.raises(JaxalignError, match=r"the config has extras/bco_mean, the checkpoint does not"):
        Checkpointer(d).restore_latest_good(extra, print)
    # Newest damaged, the one before of another layout: still the mismatch error, nothing moved.
    (d / "3" / "state" / "_METADATA").write_text("")
    before = snapshot(tmp_path)
    with pytest.raises(JaxalignError, match=r"/2: this checkpoint does not fit"):
        Checkpointer(d).restore_latest_good(state_at(0, n=128), print)
    assert snapshot(tmp_path) == before


def test_a_state_with_nan_is_never_saved(tmp_path):
    ck = Checkpointer(tmp_path / "checkpoints")
    ck.save(1, state_at(1), {"step": 1})
    bad = state_at(2)
    bad["params"]["b"] = bad["params"]["b"].at[1, 2].set(jnp.inf)
    with pytest.raises(JaxalignError, match=r"step 2: the train state holds a NaN or Inf \(params/b\); "
                                            r"not saving"):
        ck.save(2, bad, {"step": 2})
    ck.close()
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [1]


def test_a_changed_file_is_reported_as_changed_before_any_nan_it_makes(tmp_path, monkeypatch):
    # A flipped bit can land on an exponent and restore as a NaN; which of the two checks sees it
    # first must not depend on where the flip falls: the changed file is the diagnosis. Here the
    # file still parses (a trailing space in meta/metadata) and the NaN check is made to fire.
    from jaxalign.train import checkpoint as ck_mod

    d = tmp_path / "checkpoints"
    write_checkpoints(d)
    meta = d / "3" / "meta" / "metadata"
    meta.write_text(meta.read_text() + " ")
    monkeypatch.setattr(ck_mod, "nonfinite_leaf", lambda tree: "params/w")
    with pytest.raises(ck_mod.CheckpointDamaged, match=r"^checksum mismatch in meta/metadata$"):
        Checkpointer(d).restore_checked(state_at(0), 3)
    meta.write_text(meta.read_text()[:-1])  # the file as written: now the NaN check speaks
    with pytest.raises(ck_mod.CheckpointDamaged, match=r"^NaN or Inf in params/w$"):
        Checkpointer(d).restore_checked(state_at(0), 3)
