"""SIGINT / SIGTERM at any moment of a ``jaxalign`` command: one line, exit 128 + the signal.

The training loop catches the first signal itself (:class:`StopFlag`: it saves a checkpoint and
stops after the current step). Everywhere else (imports, data
loading, compiling, the final export) and for a second signal, :func:`stop_now` ends the process
at once with ``os._exit``: raising ``KeyboardInterrupt`` there unwinds through XLA's and
TensorStore's threads and could end in a segfault or a traceback, and a process that ends this
way leaves the run directory exactly as a SIGKILL would, which the resume contract already
covers (checkpoints are written to temporary names and renamed whole; a half-written export is
cleaned on the next start).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable

_cleanups: list[Callable[[], None]] = []


def stop_now(signum: int, what: str = "") -> None:
    """Run the registered clean-ups, print one line and exit ``128 + signum`` (no unwinding)."""
    for f in reversed(_cleanups):
        try:
            f()
        except Exception:  # noqa: BLE001 - exiting anyway; a clean-up must not block the exit
            pass
    name = signal.Signals(signum).name
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    msg = what or "checkpoints on disk are whole; rerun to resume"
    os.write(2, f"\nstopped by {name}: {msg}\n".encode())
    os._exit(128 + signum)


def _handler(signum, frame):
    stop_now(signum)


_handler.jaxalign_stop_now = True  # StopFlag defers a second signal to this one


class StopFlag:
    """SIGTERM / SIGINT ask the loop to checkpoint and stop after the current step (a context
    manager; ``stop`` and ``signum``, the first signal received). A second signal ends the
    process at once through :func:`stop_now` under the ``jaxalign`` command
    (:func:`exit_on_signal`), and raises KeyboardInterrupt in a Python caller's process."""

    def __init__(self):
        self.stop = False
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second signal: stop now
            if getattr(self._old.get(signum), "jaxalign_stop_now", False):
                stop_now(signum, "second signal: stopped at once; the checkpoints written before are "
                                 "whole; rerun to resume")
            raise KeyboardInterrupt
        self.stop, self.signum = True, signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def exit_on_signal():
    """Within the block, SIGINT/SIGTERM call :func:`stop_now` (previous handlers restored after)."""
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, _handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def cleanup(f: Callable[[], None]):
    """Run ``f`` also when a signal ends the process inside the block (e.g. release a lock)."""
    _cleanups.append(f)
    try:
        yield
    finally:
        _cleanups.remove(f)
