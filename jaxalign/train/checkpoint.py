"""Orbax checkpoints of the train state + data-iterator position + resolved config.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
while saving never leaves a checkpoint that looks valid. Restores go straight onto the
current shardings (``jax.ShapeDtypeStruct(..., sharding=...)`` targets).

A checkpoint damaged after the fact (a deleted or truncated array file, garbage in a metadata
file, an empty step directory) is found by :meth:`Checkpointer.restore_latest_good`, which
falls back to the newest checkpoint that restores completely. A checkpoint whose arrays do not
fit the current train state (another model size, optimizer or algorithm) is a different error,
:class:`CheckpointMismatch`: no fallback, since every checkpoint of the run has the same layout.
A state with a NaN or Inf is never saved.

Every file of a checkpoint gets a SHA-256, written to ``<step>/jaxalign_checksums.json`` once
Orbax has finalised the step (before the next save, or when the checkpointer closes) and checked
on restore: a flipped bit in an array file, which Orbax would restore as a wrong weight, makes the
checkpoint damaged. A checkpoint without the file (a kill between finalising and writing it, or
one from an older jaxalign) is restored unchecked.

A save that fills the disk raises :class:`~jaxalign.errors.NoSpaceLeft` naming the step; its
temporary directory is removed (it only takes space: Orbax never restores from one), so the
newest complete checkpoint stays the one a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxalign.errors import JaxalignError, NoSpaceLeft, is_no_space
from jaxalign.train.quiet import quiet_no_space_logs, quiet_orphaned_callbacks


class CheckpointMismatch(Exception):
    """A readable checkpoint whose arrays (paths or shapes) differ from the current train state."""


class CheckpointDamaged(Exception):
    """A checkpoint that cannot be read back completely (missing/truncated files, bad metadata)."""


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _path_names(path) -> tuple[str, ...]:
    """A key path as plain names (dataclass fields, dict keys, sequence indices alike)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _shapes(tree) -> dict[tuple[str, ...], tuple]:
    return {_path_names(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _reason(e: BaseException) -> str:
    """One short line from a (often very long) Orbax / TensorStore exception."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"\s*\[tensorstore_spec.*", "", text)
    text = re.sub(r'Error opening "(cast|zarr)" driver: ', "", text)
    return f"{type(e).__name__}: {text}"[:240]


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaf(tree) -> str | None:
    """The path of the first floating leaf of ``tree`` holding a NaN or Inf, else None (one
    small device reduction and one host transfer)."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not flat:
        return None
    flags = np.asarray(jax.device_get(_finite_flags([x for _, x in flat])))
    bad = np.flatnonzero(~flags)
    return "/".join(_path_names(flat[bad[0]][0])) if bad.size else None


# Orbax writes step N into "N.orbax-checkpoint-tmp" (with a suffix in some versions), renamed
# to "N" when complete.
_TMP = re.compile(r"(\d+)\.orbax-checkpoint-tmp")


CHECKSUMS = "jaxalign_checksums.json"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: Path) -> None:
    """Write the SHA-256 of every file under ``step_dir`` (atomically: temporary name, rename)."""
    sums = {str(p.relative_to(step_dir)): _digest(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(f".{CHECKSUMS}")}
    tmp = step_dir / f".{CHECKSUMS}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(sums, indent=0))
    tmp.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path) -> str | None:
    """None when ``step_dir``'s files match its checksums (or it has none), else what differs."""
    try:
        sums = json.loads((step_dir / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"unreadable {CHECKSUMS} ({type(e).__name__})"
    for rel, want in sums.items():
        p = step_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        if _digest(p) != want:
            return f"checksum mismatch in {rel}"
    return None


class Checkpointer:
    """Save/restore ``(state, meta)`` where meta is a JSON-able dict (iterator state, config)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.keep = max(1, keep)
        self._saving: int | None = None  # the step of the newest save() (it may still be writing)
        self._no_space: NoSpaceLeft | None = None
        quiet_orphaned_callbacks()
        quiet_no_space_logs()
        self.manager = self._open()
        self._unsealed: list[int] = []  # saved here, checksums not yet written

    def _open(self):
        return ocp.CheckpointManager(self.directory,
                                     options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, force: bool = True) -> None:
        """Save ``state`` and ``meta`` as ``step``; a state with a NaN/Inf is refused (JaxalignError)."""
        bad = nonfinite_leaf(state)
        if bad is not None:
            raise JaxalignError(f"step {step}: the train state holds a NaN or Inf ({bad}); not saving a "
                                f"checkpoint (the last good one in {self.directory} is kept)")
        self.wait()  # the previous save is final (and its failure surfaces here): seal it first
        with self._reporting_no_space():
            self._saving = step
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=force,
            )
        self._unsealed.append(step)

    def _seal(self) -> None:
        """Write the checksums of the finished saves (process 0: the files are shared)."""
        steps, self._unsealed = self._unsealed, []
        if jax.process_index() != 0:
            return
        for step in steps:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # not already rotated away
                try:
                    write_checksums(step_dir)
                except OSError:  # e.g. a full disk: the step stays valid, restored unchecked
                    for tmp in step_dir.glob(f".{CHECKSUMS}.tmp-*"):
                        tmp.unlink(missing_ok=True)

    def newest_meta(self) -> dict:
        """The meta of the newest checkpoint whose meta file reads as a JSON object, else {}
        (read directly, without restoring anything)."""
        for step in reversed(self.all_steps()):
            try:
                meta = json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict):
                return meta
        return {}

    def restore(self, state_like, step: int | None = None):
        """Restore onto the shapes, dtypes and shardings of ``state_like``; returns (state, meta)."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)),
                                    meta=ocp.args.JsonRestore()),
        )
        return out["state"], out["meta"]

    def check_layout(self, step: int, state_like) -> None:
        """Raise :class:`CheckpointMismatch` when ``step``'s array paths or shapes differ from
        ``state_like``'s, :class:`CheckpointDamaged` when its metadata cannot be read."""
        path = self.directory / str(step) / "state"
        try:
            meta = ocp.StandardCheckpointHandler().metadata(path)
            saved = _shapes(meta)
        except Exception as e:  # noqa: BLE001 - missing files, bad JSON, TensorStore errors
            raise CheckpointDamaged(_reason(e)) from None
        want = _shapes(state_like)
        for key in sorted(set(saved) | set(want)):
            name = "/".join(key)
            if key not in saved:
                raise CheckpointMismatch(f"the config has {name}, the checkpoint does not")
            if key not in want:
                raise CheckpointMismatch(f"the checkpoint has {name}, the config does not")
            if saved[key] != want[key]:
                raise CheckpointMismatch(f"{name}: shape {saved[key]} in the checkpoint, {want[key]} "
                                         "in the config")

    def restore_checked(self, state_like, step: int, needs: tuple[str, ...] = ()):
        """:meth:`restore` of ``step`` that raises :class:`CheckpointMismatch` for another layout
        and :class:`CheckpointDamaged` for anything unreadable, a meta without the keys
        ``needs``, or non-finite values."""
        self.check_layout(step, state_like)
        try:
            state, meta = self.restore(state_like, step)
        except Exception as e:  # noqa: BLE001
            raise CheckpointDamaged(_reason(e)) from None
        missing = [k for k in needs if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise CheckpointDamaged(f"its meta lacks {', '.join(missing)}")
        # After the restore, so that a truncated or missing file keeps Orbax's own reason; before
        # the finite check, so that a flipped bit which happens to make a NaN or Inf is reported
        # as what it is, a file that changed on disk (which bit a flip hits decides which check
        # sees it first, and Orbax does not write its files in a fixed layout).
        bad = verify_checksums(self.directory / str(step))
        if bad is not None:
            raise CheckpointDamaged(bad)
        bad = nonfinite_leaf(state)
        if bad is not None:
            raise CheckpointDamaged(f"NaN or Inf in {bad}")
        return state, meta

    def restore_latest_good(self, state_like, log: Callable[[str], None] = print,
                            needs: tuple[str, ...] = ()):
        """``(step, state, meta)`` of the newest checkpoint that restores completely, or
        ``(None, state_like, None)`` when there is none.

        Each damaged newer checkpoint is reported in one line and, once a good one is found,
        moved to ``<directory>.damaged/<step>`` (so later saves can reuse its step number).
        Raises :class:`JaxalignError` for a checkpoint that does not fit the config, or when
        every checkpoint is damaged; both leave the directory as it was.
        """
        steps = self.all_steps()
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                state, meta = self.restore_checked(state_like, step, needs)
            except CheckpointMismatch as e:
                raise JaxalignError(
                    f"{self.directory / str(step)}: this checkpoint does not fit the current config ({e}); "
                    "resume with the config the run started with (its config.yaml) or use a new --run-dir"
                ) from None
            except CheckpointDamaged as e:
                damaged.append((step, str(e)))
                continue
            for bad_step, why in damaged:
                dest = self._move_aside(bad_step)
                log(f"checkpoint step {bad_step} is damaged ({why}); moved to {dest}, "
                    f"resuming from step {step}")
            if damaged:
                if jax.process_count() > 1:  # process 0 moved them: wait before listing again
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("jaxalign-damaged-checkpoints")
                self.manager.close()
                self.manager = self._open()
            return step, state, meta
        if damaged:
            detail = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise JaxalignError(f"{self.directory}: no usable checkpoint ({detail}); move the directory "
                                "away to start over, or use a new --run-dir")
        return None, state_like, None

    def _move_aside(self, step: int) -> Path:
        dest_dir = self.directory.with_name(self.directory.name + ".damaged")
        dest = dest_dir / str(step)
        if dest.exists():
            dest = dest_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            dest_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(dest))
        return dest

    @contextlib.contextmanager
    def finish_on_error(self):
        """On an exception inside the block, let pending saves complete (and close) before it
        propagates: a run stopped by an error still leaves whole checkpoints."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def wait(self) -> None:
        """Wait for the pending save, then write its checksums."""
        with self._reporting_no_space():
            self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        with self._reporting_no_space():
            try:
                self.manager.wait_until_finished()
            finally:
                self.manager.close()
        self._seal()

    def _complete_steps(self) -> list[int]:
        """Committed checkpoints, from the directory itself (after a failed save Orbax's own
        list may still name the step that never completed)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def rerun_hint(self, before: int | None = None) -> str:
        """What a rerun does, for error messages: "rerun to resume from step N" (the newest
        complete checkpoint, older than ``before`` if given) or "rerun to start again from step 0"."""
        done = [s for s in self._complete_steps() if before is None or s < before]
        return f"rerun to resume from step {done[-1]}" if done else "rerun to start again from step 0"

    @contextlib.contextmanager
    def _reporting_no_space(self):
        """Turn a full disk during a save into :class:`NoSpaceLeft` (raised once and then again
        as the same error: the loop closes the manager after a failed save, and Orbax reports
        the failure a second time there), after removing the failed save's temporary files."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - only a full disk is translated, the rest re-raised
            if not is_no_space(e):
                raise
            if self._no_space is None:
                failed = self._remove_partial_saves()
                step = min(failed) if failed else self._saving
                self._no_space = NoSpaceLeft(self.directory / str(step),
                                             f"checkpoint of step {step} not saved; free space and "
                                             f"{self.rerun_hint(before=step)}")
            raise self._no_space from None

    def _remove_partial_saves(self) -> list[int]:
        """Delete the temporary directories of unfinished saves; their steps."""
        steps = []
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                m = _TMP.match(p.name)
                if m and p.is_dir():
                    steps.append(int(m.group(1)))
                    if jax.process_index() == 0:
                        shutil.rmtree(p, ignore_errors=True)
        return steps
