"""Several ``python -m jaxalign.cli`` processes of one multi-process run on this machine (a
localhost coordinator, CPU collectives through gloo), for the multi-process tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxalign.parallel.distributed import local_coordinator
from tests.procenv import HANG_S

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = HANG_S

# What an unusable platform says (no cross-process collectives on CPU): the only reason to skip.
UNSUPPORTED = ("Multiprocess computations aren't implemented", "make_gloo_tcp_collectives",
               "gloo is not available", "collectives are not supported")

# Words may be split by a newline: another thread's message can land inside one (then removed first).
GLOO_MESSAGE = re.compile(r"\[Gloo\]\s+Rank\s+\d+\s+is\s+connected\s+to\s+\d+\s+peer\s+ranks\.\s+Expected\s+"
                          r"number\s+of\s+connected\s+peer\s+ranks\s+is\s+:\s+\d+")


def wait_until(condition, procs, what: str, report, timeout: float = TIMEOUT, poll: float = 0.01) -> None:
    """Poll ``condition()`` (an event, never a time) until it holds; fail with ``report()`` when
    one of ``procs`` exits first, or after ``timeout`` seconds (then they are killed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            pytest.fail(f"a process exited ({exited[0].returncode}) before {what}\n{report()}")
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"timed out waiting for {what}\n{report()}")
        time.sleep(poll)


class Processes:
    """``n`` processes of one multi-process jaxalign run (stdout/stderr in files): process ``i``
    runs ``python -m jaxalign.cli *argv(run_dir, <coordinator options>, *extra, quiet=quiet)``."""

    def __init__(self, run_dir: Path, env: dict, *extra: str, argv, n: int = 2, quiet: bool = True):
        coordinator = local_coordinator()
        self.logs = run_dir.parent / f"{run_dir.name}.logs.{time.monotonic_ns()}"
        self.logs.mkdir(parents=True)
        self.procs = []
        for i in range(n):
            cmd = [sys.executable, "-m", "jaxalign.cli",
                   *argv(run_dir, "--coordinator", coordinator, "--num-processes", str(n),
                         "--process-id", str(i), *extra, quiet=quiet)]
            with open(self.logs / f"{i}.out", "w") as out, open(self.logs / f"{i}.err", "w") as err:
                self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err))

    def _read(self, name: str) -> str:
        # gloo (CPU collectives) reports every connection it opens, from several threads at once:
        # its messages can share a line ("...: 1[Gloo] Rank 1 ...: 1" then an empty line), or one
        # can land inside another ("[Gloo] Rank 6 is connected to [Gloo] Rank 7 ...: 7\n7 peer
        # ranks. ...: 7"). Keep jaxalign's own output: gloo messages out until none is left (the
        # inner one first, then the outer one it split), then the lines left blank by them.
        text, before = (self.logs / name).read_text(), None
        while text != before:
            before, text = text, GLOO_MESSAGE.sub("", text)
        return "".join(line for line in text.splitlines(True) if line.strip())

    def stdout(self, i: int) -> str:
        return self._read(f"{i}.out")

    def stderr(self, i: int) -> str:
        return self._read(f"{i}.err")

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        """Exit codes; on a timeout every process is killed and the test fails with their output."""
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                    q.wait()
                pytest.fail(f"the processes did not finish in {timeout} s\n{self.report()}")
        return codes

    def wait_for(self, condition, what: str, timeout: float = TIMEOUT) -> None:
        """Until ``condition()`` (an event, polled); fails with the output if a process exits first."""
        wait_until(condition, self.procs, what, self.report, timeout, poll=0.05)

    def report(self) -> str:
        return "\n".join(f"--- process {i} (exit {p.returncode}) stderr tail:\n{self.stderr(i)[-2500:]}"
                         for i, p in enumerate(self.procs))

    def succeed(self, timeout: float = TIMEOUT) -> None:
        codes = self.wait(timeout)
        if any(codes):
            text = "".join(self.stderr(i) for i in range(len(self.procs)))
            if any(s in text for s in UNSUPPORTED):
                pytest.skip("jax on this platform cannot run CPU collectives across processes: "
                            + next(s for s in UNSUPPORTED if s in text))
            pytest.fail(f"exit codes {codes}\n{self.report()}")
