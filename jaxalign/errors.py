"""One exception type for every user-facing error.

The CLI turns a :class:`JaxalignError` into a single ``error: ...`` line on stderr and exit
code 2, and a full disk (:class:`NoSpaceLeft`, or any exception :func:`is_no_space` recognises)
into one line and exit code :data:`NO_SPACE_EXIT`; anything else is a bug and keeps its traceback.
"""

import errno
import re

# The exit code of a run stopped by a full disk: ENOSPC's number on Linux, and a code that neither
# the CLI's other outcomes (0, 2) nor a shell's signal codes (128 + n) use.
NO_SPACE_EXIT = 28


class JaxalignError(Exception):
    """A problem with the user's input (file, row, field, config key), stated in one line."""


def short(value, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, without walking all of a huge value (error
    messages quote user input; a huge or deeply nested value must not flood or hang them)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warn(msg: str) -> None:
    """``warning: msg`` as one line on stderr, also with ``--quiet``: the one way a run warns
    (which process warns is the caller's choice)."""
    import sys

    print(f"warning: {msg}", file=sys.stderr, flush=True)


class NoSpaceLeft(Exception):
    """The disk filled up while writing ``path``; ``reason`` says what was lost and what to do.

    Not a :class:`JaxalignError`: the input was fine, and the run can resume once there is space.
    """

    def __init__(self, path, reason: str):
        super().__init__(f"no space left on device while writing {path} ({reason})")
        self.path, self.reason = path, reason


# What "disk full" looks like in the text of an exception that carries no errno: TensorStore
# (Orbax's array writer) reports ENOSPC as ``RESOURCE_EXHAUSTED: Error writing ...`` with
# ``No space left on device [os_error_code='28']``; safetensors and tokenizers (Rust) as
# ``No space left on device (os error 28)``.
_NO_SPACE_TEXT = re.compile(r"No space left on device|RESOURCE_EXHAUSTED: Error writing")


def _chain(exc: BaseException | None):
    """``exc`` and the exceptions it was raised from (``raise ... from``), each once. Not the
    ones it was raised while handling: an error during the cleanup after a full disk is
    another error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk: an OSError
    with errno ENOSPC, or an Orbax / TensorStore / safetensors error whose text says so.

    Out-of-memory errors also say ``RESOURCE_EXHAUSTED``, but never "Error writing".
    """
    for e in _chain(exc):
        if isinstance(e, NoSpaceLeft):
            return True
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if _NO_SPACE_TEXT.search(str(e)):
            return True
    return False


def written_path(exc: BaseException) -> str | None:
    """The file a failed write named, if any: an OSError's ``filename``, or the first quoted
    absolute path in the message (TensorStore quotes the file it failed to write)."""
    for e in _chain(exc):
        if isinstance(e, NoSpaceLeft):
            return str(e.path)
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        m = re.search(r'"(/[^"]+)"', str(e))
        if m:
            return m.group(1)
    return None
