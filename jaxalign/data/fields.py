"""Field-level parsing for dataset rows: text or chat messages, numbers, rankings, TRL's
implicit prompt, and the one-line row errors (:mod:`jaxalign.data.formats` assembles rows from
these)."""

from __future__ import annotations

import json
import math
import numbers
from typing import Union

from jaxalign.errors import JaxalignError

ROLES = ("system", "user", "assistant", "tool")

Messages = list  # list[dict[str, Any]] with "role" and "content"
Text = Union[str, Messages]


class _RowError(Exception):
    def __init__(self, field: str | None, msg: str):
        super().__init__(msg)
        self.field, self.msg = field, msg


class _Identical(Exception):
    """A preference row whose 'chosen' equals its 'rejected': dropped and counted, not an error."""


class Unreadable:
    """A row the file reader could not parse (e.g. a JSONL line that is not JSON)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"Unreadable({self.reason!r})"


def one_line(s: str, limit: int = 300) -> str:
    """``s`` on one line (newlines escaped) and at most ``limit`` characters."""
    s = "\\n".join(str(s).splitlines())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def row_error(source: str, row: int, field: str | None, msg: str) -> JaxalignError:
    """The one-line error for a bad row: ``"<source>: row 17 (0-based): field 'x': msg"``."""
    where = f"{source}: row {row} (0-based)"
    if field is not None:
        where += f": field {field!r}"
    return JaxalignError(one_line(f"{where}: {msg}", 500))


def _tname(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float) and math.isnan(v):
        return "float (NaN)"
    return type(v).__name__


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes or broken \\ud800 escapes
        return False


def _maybe_json_list(v, field: str, *, messages_only: bool):
    """CSV cells hold lists as JSON text; decode such a cell (messages only when asked)."""
    if not isinstance(v, str) or not v.lstrip().startswith("["):
        return v
    try:
        out = json.loads(v)
    except (ValueError, RecursionError):
        if messages_only:
            return v
        raise _RowError(field, "expected a list (a JSON list in a CSV cell), got a string that is not JSON")
    if messages_only and not (isinstance(out, list) and out and all(isinstance(m, dict) and "role" in m
                                                                      for m in out)):
        return v
    return out


def _messages(v: list, field: str) -> Messages:
    if not v:
        raise _RowError(field, "empty list of messages")
    out = []
    for j, m in enumerate(v):
        if not isinstance(m, dict):
            raise _RowError(field, f"message {j}: expected an object with 'role' and 'content', got {_tname(m)}")
        role = m.get("role")
        if role is None:
            raise _RowError(field, f"message {j}: missing 'role'")
        if not isinstance(role, str) or role not in ROLES:
            raise _RowError(field, f"message {j}: role {role!r} is not one of {', '.join(ROLES)}")
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise _RowError(field, f"message {j}: 'tool_calls' expected a list of objects, got {_tname(calls)}")
        content = m.get("content")
        if content is None and not calls:
            raise _RowError(field, f"message {j}: missing 'content'")
        if content is not None:
            if not isinstance(content, str):
                raise _RowError(field, f"message {j}: 'content' expected a string, got {_tname(content)}")
            if not _utf8_ok(content):
                raise _RowError(field, f"message {j}: 'content' is not valid UTF-8 text")
            if not content.strip() and role in ("user", "assistant") and not m.get("tool_calls"):
                raise _RowError(field, f"message {j}: empty 'content' in a {role} message")
        # Arrow fills keys other rows have with null: drop them so templates see the row as written.
        out.append({k: val for k, val in m.items() if val is not None})
    return out


def _text(row: dict, field: str, *, csv: bool = False, key: str | None = None, value=None,
          has_value: bool = False) -> Text:
    """A non-empty string or a valid list of messages in ``row[key or field]``."""
    if has_value:
        v = value
    else:
        key = key or field
        if key not in row:
            raise _RowError(field, "missing")
        v = row[key]
    if v is None:
        raise _RowError(field, "missing (null)")
    if csv:
        v = _maybe_json_list(v, field, messages_only=True)
    if isinstance(v, str):
        if not _utf8_ok(v):
            raise _RowError(field, "not valid UTF-8 text")
        if not v.strip():
            raise _RowError(field, "empty string")
        return v
    if isinstance(v, (list, tuple)):
        return _messages(list(v), field)
    raise _RowError(field, f"expected a string or a list of messages, got {_tname(v)}")


def _prompt_messages_ok(prompt: Text, field: str = "prompt") -> None:
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise _RowError(field, "the last message is an assistant turn; a prompt ends with a user, "
                               "system or tool message")


def _completion(prompt: Text, completion: Text, field: str) -> Text:
    """A completion that matches its prompt's kind (a string after a message list becomes one
    assistant message)."""
    if isinstance(prompt, list):
        if isinstance(completion, str):
            return [{"role": "assistant", "content": completion}]
        if completion[0]["role"] != "assistant":
            raise _RowError(field, f"a completion starts with an assistant message, got role "
                                   f"{completion[0]['role']!r}")
        return completion
    if isinstance(completion, list):
        raise _RowError(field, "is a list of messages but 'prompt' is a string; give both as messages "
                               "or both as strings")
    return completion


def _number(row: dict, field: str, csv: bool = False) -> float:
    v = row[field]
    if csv and isinstance(v, str):  # CSV cells are text
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _RowError(field, f"expected a number, got {_tname(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise _RowError(field, f"expected a finite number, got {v}")
    return v


def _label(row: dict, field: str, csv: bool = False) -> bool:
    """A boolean label: JSON ``true``/``false`` (a CSV cell: the text ``true``/``false``, any case).
    Numbers are refused: 0/1 or a score would be a guess at what the data means."""
    if field not in row:
        raise _RowError(field, "missing")
    v = row[field]
    if v is None:
        raise _RowError(field, "missing (null)")
    if csv and isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    if isinstance(v, bool) or type(v).__name__ in ("bool_", "bool"):  # numpy booleans too
        return bool(v)
    shown = f" {v!r}" if isinstance(v, (str, int, float)) and len(repr(v)) <= 40 else ""
    raise _RowError(field, f"expected true or false, got {_tname(v)}{shown}")


def _ranking(row: dict, k: int) -> list[int]:
    v = _maybe_json_list(row["ranking"], "ranking", messages_only=False)
    if not isinstance(v, (list, tuple)):
        raise _RowError("ranking", f"expected a list of indices into 'responses', got {_tname(v)}")
    out = []
    for j, r in enumerate(v):
        if isinstance(r, bool) or not isinstance(r, numbers.Real):
            raise _RowError("ranking", f"item {j}: expected an integer index, got {_tname(r)}")
        if isinstance(r, float) and not math.isfinite(r):
            raise _RowError("ranking", f"item {j}: expected an integer index, got {r}")
        if int(r) != r:
            raise _RowError("ranking", f"item {j}: expected an integer index, got {r!r}")
        out.append(int(r))
    if sorted(out) != list(range(k)):
        raise _RowError("ranking", f"{out} is not a permutation of 0..{k - 1} (one index per response, "
                                   "best first)")
    return out


def _implicit_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split the shared beginning of ``chosen`` and ``rejected`` off as the prompt."""
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise _RowError("rejected", "without a 'prompt', 'chosen' and 'rejected' must both be strings "
                                    "or both be message lists")
    n = min(len(chosen), len(rejected))
    k = 0
    while k < n and chosen[k] == rejected[k]:
        k += 1
    if isinstance(chosen, list):
        while k > 0 and chosen[k - 1]["role"] == "assistant":
            k -= 1  # the prompt ends before the first differing assistant turn
        if k == 0:
            raise _RowError("chosen", "no 'prompt' field and no shared leading messages with 'rejected' "
                                      "to use as the prompt")
        if k >= len(chosen) or k >= len(rejected):
            raise _RowError("rejected", "nothing left after the shared prompt (chosen and rejected identical?)")
        if chosen[k]["role"] != "assistant" or rejected[k]["role"] != "assistant":
            raise _RowError("chosen", "after the shared prompt, chosen and rejected must continue with an "
                                      "assistant message")
        return chosen[:k], chosen[k:], rejected[k:]
    # Strings: back off to a word boundary, the space going with the completion (as BPE tokens do).
    while k > 0 and not chosen[k - 1].isspace():
        k -= 1
    if k > 0 and chosen[k - 1] == " ":
        k -= 1
    prompt = chosen[:k]
    if not prompt.strip():
        raise _RowError("chosen", "no 'prompt' field and no shared leading text with 'rejected' to use "
                                  "as the prompt")
    if not chosen[k:].strip() or not rejected[k:].strip():
        raise _RowError("rejected", "nothing left after the shared prompt (chosen and rejected identical?)")
    return prompt, chosen[k:], rejected[k:]
