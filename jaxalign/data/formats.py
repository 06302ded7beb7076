"""Dataset formats -> canonical examples, with one-line errors that name the file, row and field.

Formats (the field names people already use, TRL's among them):

==================  ==============================================================
``lm``              ``{"text"}`` (or ``{"messages"}``: a conversation, trained on its
                    assistant turns by default, see :mod:`jaxalign.data.chat_mask`)
``prompt_completion``  ``{"prompt", "completion"}``
``prompt_only``     ``{"prompt"}`` (RL prompts)
``preference``      ``{"prompt", "chosen", "rejected"}`` (+ optional numeric ``margin``);
                    without ``prompt`` the shared beginning of ``chosen`` and ``rejected``
                    is the prompt (TRL's "implicit prompt")
``ranked``          ``{"prompt", "responses": [...], "ranking": [...]}``; ``ranking`` lists
                    indices into ``responses``, best first, and must be a permutation
``unpaired``        ``{"prompt", "completion", "label"}``, ``label`` a boolean (true: the
                    completion is desirable); TRL's "unpaired preference" format (KTO)
==================  ==============================================================

Any text field may instead be a list of ``{"role", "content"}`` messages (roles ``system``,
``user``, ``assistant``, ``tool``), rendered later with the tokenizer's chat template.
Canonical examples keep text as text: tokenisation (and every prompt/completion boundary) is
decided in :mod:`jaxalign.data.tokenize`, on token ids.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Union

from jaxalign.data.fields import (  # noqa: F401  (re-exported: jaxalign.data.loading)
    ROLES, Messages, Text, Unreadable, _completion, _Identical, _implicit_prompt, _label, _maybe_json_list,
    _messages, _number, _prompt_messages_ok, _ranking, _RowError, _text, _tname, _utf8_ok, one_line, row_error)
from jaxalign.errors import JaxalignError

log = logging.getLogger("jaxalign.data")

FORMATS = ("lm", "prompt_completion", "prompt_only", "preference", "ranked", "unpaired")
_ALIASES = {
    "text": "lm", "language_modeling": "lm", "language-modeling": "lm",
    "prompt-completion": "prompt_completion", "sft": "prompt_completion",
    "prompt": "prompt_only", "prompt-only": "prompt_only", "prompts": "prompt_only",
    "pairwise": "preference", "ranking": "ranked",
    "unpaired_preference": "unpaired", "unpaired-preference": "unpaired",
}
_MAX_REPORTED = 5


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
    """A prompt for generation (RL). ``columns``: the row's other fields (e.g. ``answer``), which
    an online algorithm passes to its reward; carried along, not part of the example's identity
    (not compared or hashed)."""

    prompt: Text
    row: int = -1
    columns: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


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


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    """One completion of a prompt labelled desirable (``label`` true) or undesirable (KTO)."""

    prompt: Text
    completion: Text
    label: bool
    row: int = -1


Example = Union[LMExample, PromptCompletionExample, PromptExample, PreferenceExample, RankedExample,
                UnpairedExample]


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
    if {"prompt", "completion", "label"} <= keys:
        found.append(("unpaired", "prompt, completion, label"))
    elif {"prompt", "completion"} <= keys:
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
            f"prompt+chosen+rejected | prompt+responses+ranking | prompt+completion+label "
            f"(or set the format explicitly)"))
    both = " and ".join(f"{f!r} ({k})" for f, k in found)
    raise JaxalignError(one_line(
        f"{source}: row {index} (0-based) has the fields of both {both}; the format is ambiguous, "
        f"set it explicitly (data.format)"))


# ----------------------------------------------------------------------------------------------
# Row checks (the field checks are in jaxalign.data.fields)


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
        return PromptExample(prompt, index, {k: v for k, v in row.items() if k != "prompt"})
    if fmt == "prompt_completion":
        prompt = _text(row, "prompt", csv=csv)
        _prompt_messages_ok(prompt)
        completion = _completion(prompt, _text(row, "completion", csv=csv), "completion")
        return PromptCompletionExample(prompt, completion, index)
    if fmt == "unpaired":
        prompt = _text(row, "prompt", csv=csv)
        _prompt_messages_ok(prompt)
        completion = _completion(prompt, _text(row, "completion", csv=csv), "completion")
        return UnpairedExample(prompt, completion, _label(row, "label", csv), index)
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
            PreferenceExample: "preference", RankedExample: "ranked", UnpairedExample: "unpaired"}[type(example)]
