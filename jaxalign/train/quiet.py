"""Silence Orbax's echoes of an error that jaxalign reports itself, in one line.

When a checkpoint write or read fails, Orbax's background threads log the exception (with its
traceback) on every thread that waited for it, and TensorStore completes the orphaned writes and
reads after Orbax closed their event loop, each completion printing a traceback of its own. The
same exception then reaches the main thread, which reports it (``error: ...``), so these copies
only bury that line; so do asyncio's "exception was never retrieved" records of the aborted
write's futures, whenever the garbage collector gets to them. Both filters are narrow: other log records and other unraisable exceptions
pass through untouched.
"""

from __future__ import annotations

import logging
import sys

from jaxalign.errors import is_no_space


def quiet_orphaned_callbacks() -> None:
    """Drop ``RuntimeError('Event loop is closed')`` reported through ``sys.unraisablehook``:
    TensorStore finishing the other reads or writes of an aborted Orbax operation after Orbax
    closed its event loop. Every other unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxalign_quiet", False):
        return

    def hook(u):
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    hook._jaxalign_quiet = True
    sys.unraisablehook = hook


class _OrbaxNoSpace(logging.Filter):
    """Rejects Orbax's log records about a full disk (the main thread reports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        return not _says_no_space(record)


class _UnretrievedNoSpace(logging.Filter):
    """Rejects asyncio's "exception was never retrieved" records of a full disk: the futures of
    an aborted Orbax write that are garbage-collected, on a schedule of the collector's own,
    after the main thread reported the write's error (so the echo came and went from run to run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _says_no_space(record)


def _says_no_space(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return is_no_space(exc) or is_no_space(Exception(record.getMessage()))


def quiet_no_space_logs() -> None:
    """Install the full-disk filters on absl's logger (which Orbax logs through) and on
    asyncio's, once each."""
    for name, kind in (("absl", _OrbaxNoSpace), ("asyncio", _UnretrievedNoSpace)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
