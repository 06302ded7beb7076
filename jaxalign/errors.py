"""One exception type for every user-facing error.

The CLI turns a :class:`JaxalignError` into a single ``error: ...`` line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


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
