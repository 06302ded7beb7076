"""The full-disk echo filters: Orbax's and asyncio's records of a full disk are dropped (the
main thread reports it in one line); every other record passes."""

import errno
import logging

from jaxalign.train.quiet import quiet_no_space_logs


def _record(name: str, exc: BaseException, pathname: str = "x.py") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, pathname, 1, "future: <_GatheringFuture finished>",
                             None, (type(exc), exc, None))


def test_asyncio_records_of_a_full_disk_are_dropped_and_others_kept():
    quiet_no_space_logs()
    quiet_no_space_logs()  # idempotent: one filter each
    log = logging.getLogger("asyncio")
    assert sum(type(f).__name__ == "_UnretrievedNoSpace" for f in log.filters) == 1
    full = ValueError('RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database: Failed to write '
                      "256222 bytes to file 6: No space left on device [os_error_code='28']")
    assert not log.filter(_record("asyncio", full))
    assert not log.filter(_record("asyncio", OSError(errno.ENOSPC, "No space left on device")))
    assert log.filter(_record("asyncio", ValueError("something else went wrong")))


def test_absl_records_are_dropped_only_from_orbax():
    quiet_no_space_logs()
    log = logging.getLogger("absl")
    full = OSError(errno.ENOSPC, "No space left on device")
    assert not log.filter(_record("absl", full, "/site-packages/orbax/checkpoint/x.py"))
    assert log.filter(_record("absl", full, "/site-packages/other/x.py"))
    assert log.filter(_record("absl", ValueError("bad"), "/site-packages/orbax/checkpoint/x.py"))
