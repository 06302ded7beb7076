"""One exception type for every user-facing error.

The CLI turns a :class:`JaxalignError` into a single ``error: ...`` line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class JaxalignError(Exception):
    """A problem with the user's input (file, row, field, config key), stated in one line."""
