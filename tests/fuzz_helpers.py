"""Shared by the fuzz tests: the CI-friendly hypothesis settings and checks of the contract."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import HealthCheck, settings

# Derandomised (the same cases on every run and machine), no example database, no deadline
# (a loaded CI machine must not fail a test for being slow); max_examples is set per test.
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def one_error_line(e: Exception, contains: str = "") -> str:
    """The message of a user-facing error: one non-empty line (containing ``contains``)."""
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert contains in msg, msg
    return msg


def cli_error_line(capsys, rc: int) -> str:
    """After ``jaxalign.cli.main``: exit code 2 and exactly one ``error: ...`` line on stderr."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def tree_digest(root: Path) -> dict:
    """Every file, directory and symlink under ``root``, with its content hash or link target."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out
