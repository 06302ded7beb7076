"""Orbax checkpoints of the train state + data-iterator position + resolved config.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
while saving never leaves a checkpoint that looks valid. Restores go straight onto the
current shardings (``jax.ShapeDtypeStruct(..., sharding=...)`` targets).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """Save/restore ``(state, meta)`` where meta is a JSON-able dict (iterator state, config)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = True) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, state_like, step: int | None = None):
        """Restore onto the shapes, dtypes and shardings of ``state_like``; returns (state, meta)."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)),
                                    meta=ocp.args.JsonRestore()),
        )
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
