"""One run per run directory: an exclusive lock held for the whole run.

Two launches on one run directory would otherwise both resume from the same checkpoint and mix
their ``config.yaml``, ``metrics.jsonl``, checkpoints and ``final/``. The lock is an advisory
``flock`` on ``<run_dir>/.jaxalign-lock``: the kernel releases it when its process ends, however
it ends (a SIGKILL or a crash leaves no stale lock to clear by hand; a lock file left behind
names a dead process and is simply taken over). The file holds the owner's pid, host, start time
and command line, for the one-line refusal a second launch gets. It works across hosts where the
file system supports ``flock`` (local disks; NFS maps it to POSIX locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from jaxalign.errors import JaxalignError

LOCK_NAME = ".jaxalign-lock"


def _owner(path: Path) -> str:
    """The lock holder, as written in the lock file ("pid 123 on host h, started ...: cmd")."""
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError, TypeError):  # written as we read it
        return "another process"


class RunLock:
    """Exclusive ownership of a run directory (a context manager).

    :meth:`acquire` creates the directory if needed (and removes it again on :meth:`release`
    when the run left nothing in it) and raises :class:`JaxalignError` naming the owner when
    another process holds it.
    """

    def __init__(self, run_dir: str | Path, key: str = "run_dir"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.key = key
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> "RunLock":
        missing = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing  # innermost first: removed in this order when left empty
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_created()
                raise JaxalignError(
                    f"run directory {self.run_dir} is in use by another jaxalign run ({_owner(self.path)}); "
                    f"wait for it to finish, or use another {'--run-dir' if self.key == '--run-dir' else 'run_dir'}"
                ) from None
            # The previous owner may have removed the file between our open and our lock: then we
            # locked an orphaned inode that a third process cannot see. Retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Give up the directory: remove the lock file, then unlock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:  # a run that wrote nothing leaves no directory behind
            try:
                p.rmdir()
            except OSError:  # not empty (or already gone): keep it
                break
        self._created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
