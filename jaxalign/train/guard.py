"""Counting the steps the non-finite guard skipped, without waiting for the device each step.

The train step skips its update when the loss or a gradient is NaN/Inf and reports
``skipped`` (1.0; for a minibatch step, the fraction of its updates skipped). The loop hands
each step's ``skipped`` device scalar to :class:`SkipCounter` as it dispatches the step; the
counter reads the ones that are already computed (``is_ready()``), so checking every step adds
no host sync, and reads the rest at log steps and before checkpoints (``flush``). Every step is
counted, whatever ``train.log_every`` is.
"""

from __future__ import annotations

from collections import deque

import jax

from jaxalign.errors import JaxalignError


class SkipCounter:
    """Skipped steps: ``total`` and ``in_row`` (consecutive, up to the newest counted step).
    Raises JaxalignError once ``limit`` steps in a row were skipped.

    Args:
      limit: ``train.max_nonfinite_steps``.
      in_row: the streak a resumed run starts with.
      eager: raise as soon as a step is counted (:meth:`add`); otherwise only at :meth:`flush` /
        :meth:`check`, which every process of a multi-process run reaches at the same step (a
        step's readiness differs between processes: raising on it would leave the others waiting).
    """

    def __init__(self, limit: int, in_row: int = 0, eager: bool = True):
        self.limit, self.in_row, self.total = max(1, int(limit)), int(in_row), 0
        self.eager = eager
        self.first_in_row: int | None = None
        self.error: str | None = None
        self._pending: deque = deque()

    def add(self, step: int, skipped) -> None:
        """Step ``step`` (1-based) reported ``skipped`` (a device or host scalar, or None); counts
        the steps already computed and raises once the limit is reached."""
        if skipped is not None:
            self._pending.append((step, skipped))
        self._drain(block=False)
        if self.eager:
            self.check()

    def flush(self, check: bool = True) -> None:
        """Count every pending step (waits for them), then :meth:`check` unless ``check=False``."""
        self._drain(block=True)
        if check:
            self.check()

    def check(self) -> None:
        """Raise JaxalignError if ``limit`` counted steps in a row were skipped."""
        if self.error is not None:
            raise JaxalignError(self.error)

    def _drain(self, block: bool) -> None:
        while self._pending:
            step, x = self._pending[0]
            if not block and isinstance(x, jax.Array) and not x.is_ready():
                return
            self._pending.popleft()
            if float(jax.device_get(x)) > 0:
                self.total += 1
                self.in_row += 1
                if self.first_in_row is None:
                    self.first_in_row = step - self.in_row + 1
                if self.in_row >= self.limit and self.error is None:
                    self.error = (
                        f"{self.in_row} steps in a row had a non-finite loss or gradient (steps "
                        f"{self.first_in_row}-{step}, train.max_nonfinite_steps={self.limit}); stopping. "
                        "Lower optim.lr, enable optim.grad_clip or check the data")
            else:
                self.in_row, self.first_in_row = 0, None
