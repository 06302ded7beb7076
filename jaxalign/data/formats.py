"""Dataset formats -> canonical examples, with one-line errors that name the file, row and field.

Formats (the field names people already use, TRL's among them):

==================  ==============================================================
``lm``              ``{"text"}`` (or ``{"messages"}``)
``prompt_completion``  ``{"prompt", "completion"}``
``prompt_only``     ``{"prompt"}`` (RL prompts)
``preference``      ``{"prompt", "chosen", "rejected"}`` (+ optional numeric ``margin``);
                    without ``prompt`` the shared beginning of ``chosen`` and ``rejected``
                    is the prompt (TRL's "implicit prompt")
``ranked``          ``{"prompt", "responses": [...], "ranking": [...]}``; ``ranking`` lists
                    indices into ``responses``, best first, and must be a permutation
==================  ==============================================================

Any text field may instead be a list of ``{"role", "content"}`` messages (roles ``system``,
``user``, ``assistant``, ``tool``), rendered later with the tokenizer's chat template.
Canonical examples keep text as text: tokenisation (and every prompt/completion boundary) is
decided in :mod:`jaxalign.data.tokenize`, on token ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
from typing import Any, Iterable, Union

from jaxalign.errors import JaxalignError

log = logging.getLogger("jaxalign.data")

FORMATS = ("lm", "prompt_completion", "prompt_only", "preference", "ranked")
_ALIASES = {
    "text": "lm", "language_modeling": "lm", "language-modeling": "lm",
    "prompt-completion": "prompt_completion", "sft": "prompt_completion",
    "prompt": "prompt_only", "prompt-only": "prompt_only", "prompts": "prompt_only",
    "pairwise": "preference", "ranking": "ranked",
}
ROLES = ("system", "user", "assistant", "tool")
_MAX_REPORTED = 5

Messages = list  # list[dict[str, Any]] with "role" and "content"
Text = Union[str, Messages]


@dataclasses.dataclass(frozen=True)
class LMExample:
    """Language modelling: every token after the first carries the loss."""

    text: Text
    row: int = -1


@dataclasses.dataclass(frozen=True)
class PromptCompletionExample:
    """Supervised pair: only completion tokens carry the loss."""

    prompt: Text
    completion: Text
    row: int = -1


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """A prompt for generation (RL)."""

    prompt: Text
    row: int = -1


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
    """A preference pair sharing one prompt; ``margin`` is optional (Llama 2 RM margin)."""

    prompt: Text
    chosen: Text
    rejected: Text
    row: int = -1
    margin: float | None = None


@dataclasses.dataclass(frozen=True)
class RankedExample:
    """K >= 2 responses to one prompt, sorted best first (the row's ``ranking`` applied)."""

    prompt: Text
    responses: tuple
    row: int = -1


Example = Union[LMExample, PromptCompletionExample, PromptExample, PreferenceExample, RankedExample]


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


def normalize_format(fmt: str) -> str:
    """Canonical format name (accepts aliases such as ``"prompt-completion"``, ``"sft"``)."""
    f = str(fmt).strip().lower()
    f = _ALIASES.get(f, f)
    if f != "auto" and f not in FORMATS:
        raise JaxalignError(f"data format {fmt!r}: expected 'auto' or one of {', '.join(FORMATS)}")
    return f


def _present(row: dict) -> set:
    return {k for k, v in row.items() if v is not None}


def detect_format(row: Any, source: str = "<rows>", index: int = 0) -> str:
    """The format implied by the (non-null) fields of ``row``; ambiguous or unknown -> error."""
    if isinstance(row, Unreadable):
        raise row_error(source, index, None, f"{row.reason}; cannot detect the format from it")
    if not isinstance(row, dict):
        raise row_error(source, index, None, f"expected an object with named fields, got {_tname(row)}")
    keys = _present(row)
    found = []
    if {"chosen", "rejected"} <= keys:
        found.append(("preference", "chosen, rejected"))
    if {"responses", "ranking"} <= keys:
        found.append(("ranked", "prompt, responses, ranking"))
    if {"prompt", "completion"} <= keys:
        found.append(("prompt_completion", "prompt, completion"))
    if keys & {"text", "messages"}:
        found.append(("lm", "text"))
    if not found and "prompt" in keys:
        found.append(("prompt_only", "prompt"))
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise JaxalignError(one_line(
            f"{source}: cannot tell the data format from the fields of row {index} (0-based): "
            f"{sorted(map(str, keys))}; expected text | prompt+completion | prompt | "
            f"prompt+chosen+rejected | prompt+responses+ranking (or set the format explicitly)"))
    both = " and ".join(f"{f!r} ({k})" for f, k in found)
    raise JaxalignError(one_line(
        f"{source}: row {index} (0-based) has the fields of both {both}; the format is ambiguous, "
        f"set it explicitly (data.format)"))


# ----------------------------------------------------------------------------------------------
# Field checks


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


def _check_row(row: Any, fmt: str, index: int, csv: bool, margin_row) -> Example:
    """One canonical example from ``row``; ``margin_row`` (an int or False): the row whose margin
    makes margins required."""
    if isinstance(row, Unreadable):
        raise _RowError(None, row.reason)
    if not isinstance(row, dict):
        raise _RowError(None, f"expected an object with named fields, got {_tname(row)}")
    if fmt == "lm":
        key = "text" if row.get("text") is not None or "messages" not in row else "messages"
        return LMExample(_text(row, "text" if key == "text" else "messages", csv=csv), index)
    if fmt == "prompt_only":
        prompt = _text(row, "prompt", csv=csv)
        _prompt_messages_ok(prompt)
        return PromptExample(prompt, index)
    if fmt == "prompt_completion":
        prompt = _text(row, "prompt", csv=csv)
        _prompt_messages_ok(prompt)
        completion = _completion(prompt, _text(row, "completion", csv=csv), "completion")
        return PromptCompletionExample(prompt, completion, index)
    if fmt == "preference":
        chosen = _text(row, "chosen", csv=csv)
        rejected = _text(row, "rejected", csv=csv)
        if row.get("prompt") is None:
            if chosen == rejected:  # checked before the split: identical texts have no split point
                raise _Identical()
            prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
        else:
            prompt = _text(row, "prompt", csv=csv)
            chosen = _completion(prompt, chosen, "chosen")
            rejected = _completion(prompt, rejected, "rejected")
        _prompt_messages_ok(prompt)
        if chosen == rejected:
            raise _Identical()
        margin = None
        if margin_row is not False:
            if row.get("margin") is None:
                raise _RowError("margin", f"missing (row {margin_row} has a margin, so every row needs one)")
            margin = _number(row, "margin", csv)
        return PreferenceExample(prompt, chosen, rejected, index, margin)
    if fmt == "ranked":
        prompt = _text(row, "prompt", csv=csv)
        _prompt_messages_ok(prompt)
        if row.get("responses") is None:
            raise _RowError("responses", "missing")
        if row.get("ranking") is None:
            raise _RowError("ranking", "missing")
        responses = _maybe_json_list(row["responses"], "responses", messages_only=False)
        if not isinstance(responses, (list, tuple)):
            raise _RowError("responses", f"expected a list of responses, got {_tname(responses)}")
        if len(responses) < 2:
            raise _RowError("responses", f"expected at least 2 responses to rank, got {len(responses)}")
        texts = []
        for j, r in enumerate(responses):
            f = f"responses[{j}]"
            texts.append(_completion(prompt, _text(row, f, value=r, has_value=True), f))
        ranking = _ranking(row, len(texts))
        return RankedExample(prompt, tuple(texts[i] for i in ranking), index)
    raise JaxalignError(f"data format {fmt!r}: expected one of {', '.join(FORMATS)}")


def to_examples(rows: Iterable, fmt: str = "auto", source: str = "<rows>",
                skip_invalid_rows: bool = False) -> tuple[list[Example], int]:
    """Validate ``rows`` (dicts) against ``fmt`` and return ``(examples, n_skipped)``.

    Args:
      rows: a ``datasets.Dataset``, a list of dicts, or what :func:`load_dataset_rows` returns.
      fmt: one of :data:`FORMATS` (or an alias), or ``"auto"``: detected from the non-null fields
        of the first row, an error if they fit no format or more than one.
      source: the file or dataset name used in error messages.
      skip_invalid_rows: skip (and count) bad rows instead of raising; the first few reasons are
        logged as a warning on the ``jaxalign.data`` logger (all of them: :func:`check_rows`).

    A preference row whose ``chosen`` equals its ``rejected`` carries no preference: it is
    dropped with a warning (not an error, not counted in ``n_skipped``); the number dropped is
    ``len(rows) - len(examples) - n_skipped``.

    Raises:
      JaxalignError: a one-line message naming the source, the row (0-based) and the field.
    """
    examples, reasons = check_rows(rows, fmt, source, skip_invalid_rows)
    return examples, len(reasons)


def check_rows(rows: Iterable, fmt: str = "auto", source: str = "<rows>",
               skip_invalid_rows: bool = False) -> tuple[list[Example], list[str]]:
    """:func:`to_examples`, but returning the skip reasons (one line each) instead of a count."""
    fmt = normalize_format(fmt)
    csv = str(source).lower().endswith(".csv")
    if not hasattr(rows, "__getitem__") or not hasattr(rows, "__len__"):
        rows = list(rows)
    if len(rows) == 0:
        raise JaxalignError(f"{source}: no rows")
    first = 0
    if skip_invalid_rows:  # detect from the first row that is an object at all
        first = next((i for i in range(len(rows)) if isinstance(rows[i], dict)), 0)
    if fmt == "auto":
        fmt = detect_format(rows[first], source, first)
    head = rows[first]
    has_margin = fmt == "preference" and isinstance(head, dict) and head.get("margin") is not None
    examples: list[Example] = []
    reasons: list[str] = []
    identical: list[int] = []
    for i, row in enumerate(rows):
        try:
            examples.append(_check_row(row, fmt, i, csv, first if has_margin else False))
        except _Identical:
            identical.append(i)
        except _RowError as e:
            err = row_error(source, i, e.field, e.msg)
            if not skip_invalid_rows:
                raise err from None
            reasons.append(str(err))
    if reasons:
        shown = "; ".join(reasons[:_MAX_REPORTED])
        more = f" (and {len(reasons) - _MAX_REPORTED} more)" if len(reasons) > _MAX_REPORTED else ""
        log.warning("%s: skipped %d invalid row(s) of %d: %s%s", source, len(reasons),
                    len(rows), shown, more)
    if identical:
        shown = ", ".join(map(str, identical[:_MAX_REPORTED]))
        shown += ", ..." if len(identical) > _MAX_REPORTED else ""
        log.warning("%s: dropped %d preference row(s) whose 'rejected' is identical to 'chosen' "
                    "(rows %s, 0-based)", source, len(identical), shown)
    if not examples:
        if not reasons:
            raise JaxalignError(f"{source}: every row was dropped: 'rejected' is identical to 'chosen' "
                                f"in all {len(identical)} rows")
        raise JaxalignError(one_line(f"{source}: every row is invalid; first: {reasons[0]}"))
    return examples, reasons


def example_format(example: Example) -> str:
    """The format name of a canonical example."""
    return {LMExample: "lm", PromptCompletionExample: "prompt_completion", PromptExample: "prompt_only",
            PreferenceExample: "preference", RankedExample: "ranked"}[type(example)]


# Loading lives in jaxalign.data.loading (it imports the names above); re-exported here.
from jaxalign.data.loading import load_dataset_rows, load_examples  # noqa: E402,F401
