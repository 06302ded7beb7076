"""Token in, token out: canonical examples -> int32 token ids with completion masks.

Prompt and completion are never split on strings. A message-list example is rendered twice with
the tokenizer's chat template — the prompt with ``add_generation_prompt=True`` and the whole
conversation without — and the completion ids are the suffix of the conversation's ids after
the prompt's ids (when the prompt's ids are a prefix of them, which holds for ChatML, Llama 3,
Mistral, ...; otherwise the completion is tokenised on its own). So prompt + completion are
exactly the tokens of the rendered conversation. With ``add_eos=True`` a completion ends with
an end-of-turn token: the template's own (whitespace the template writes after it, like
ChatML's ``"\\n"``, is dropped) or the tokenizer's ``eos_token_id`` appended.

Outputs (dicts of numpy int32 arrays, plus ``row``: the 0-based source row):

- ``lm`` / ``prompt_completion``: ``input_ids [L]``, ``completion_mask [L]`` (1 on completion
  tokens; for ``lm`` on every token after the first, or for a conversation on its assistant
  turns: ``assistant_only_loss``, :mod:`jaxalign.data.chat_mask`);
- ``preference``: ``prompt_ids``, ``chosen_ids``, ``chosen_mask``, ``rejected_ids``,
  ``rejected_mask`` (``*_ids`` include the shared prompt; ``*_mask`` marks the completion), and
  ``margin`` (float) when the example has one;
- ``ranked``: ``prompt_ids``, ``response_ids`` and ``response_masks``: lists of K arrays, best first;
- ``prompt_only``: ``prompt_ids``, and ``columns`` (the row's other fields, a dict) when it has any;
- ``unpaired``: ``prompt_ids``, ``completion_ids`` (the completion alone: batches left-pad the
  prompts and right-pad the completions, so KTO can pair prompt i with completion j by shifting
  rows) and ``label`` (bool). :func:`unpair_preference` turns tokenized preference pairs into
  two such examples each.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from jaxalign.data.chat_mask import (  # noqa: F401  (ChatTemplateError: re-exported)
    ChatTemplateError,
    PrefixError,
    assistant_mask,
    completion_assistant_mask,
)
from jaxalign.data.formats import (
    Example,
    LMExample,
    PreferenceExample,
    PromptCompletionExample,
    PromptExample,
    RankedExample,
    UnpairedExample,
    row_error,
)
from jaxalign.data.render import Renderer  # noqa: F401  (re-exported)
from jaxalign.errors import JaxalignError

PROMPT_OVERFLOW = ("truncate_left", "drop", "error")


def _i32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int32)


def _check_lengths(max_length, max_prompt_length):
    if max_length is not None and max_length < 2:
        raise JaxalignError(f"max_length must be >= 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise JaxalignError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise JaxalignError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length "
                            f"({max_length}) to leave room for the completion")


def _fit_prompt(ids: list[int], limit: int | None, policy: str, bos_id, source: str, row: int,
                field: str = "prompt") -> list[int] | None:
    """Positions of ``ids`` kept under ``prompt_overflow`` when longer than ``limit``; None means drop."""
    if limit is None or len(ids) <= limit:
        return list(range(len(ids)))
    if policy == "drop":
        return None
    if policy == "error":
        raise row_error(source, row, field, f"{len(ids)} tokens, more than max_prompt_length={limit} "
                                            "(prompt_overflow: error; use truncate_left or drop)")
    if bos_id is not None and ids[0] == bos_id and limit > 1:
        return [0] + list(range(len(ids) - limit + 1, len(ids)))  # keep the BOS, then the prompt's end
    return list(range(len(ids) - limit, len(ids)))


def _sequence(prompt_ids: list[int], completion: list[int], max_length: int | None, flags: set | None = None,
              prompt_mask: list[int] | None = None, completion_mask: list[int] | None = None):
    """``(ids, mask)`` of prompt + completion, the completion cut on the right to ``max_length``
    (``"truncated"`` added to ``flags`` then); ``prompt_mask`` / ``completion_mask``: the loss
    mask of the prompt tokens (default 0s) and of the completion tokens (default 1s)."""
    if max_length is not None and len(prompt_ids) + len(completion) > max_length:
        completion = completion[: max(max_length - len(prompt_ids), 0)]
        if flags is not None:
            flags.add("truncated")
    ids = prompt_ids + completion
    c_mask = completion_mask[: len(completion)] if completion_mask is not None else [1] * len(completion)
    mask = (prompt_mask if prompt_mask is not None else [0] * len(prompt_ids)) + c_mask
    return _i32(ids), _i32(mask)


def tokenize_example(example: Example, tokenizer=None, *, max_length: int | None = None,
                     max_prompt_length: int | None = None, prompt_overflow: str = "truncate_left",
                     prompt_template: str | None = None, add_eos: bool = True, source: str = "<data>",
                     renderer: Renderer | None = None, assistant_only_loss: bool = True,
                     completion_only_loss: bool = True, counts: dict | None = None) -> dict | None:
    """Token ids and masks of one canonical example (see the module docstring for the keys).

    Args:
      example: from :func:`jaxalign.data.formats.to_examples`.
      tokenizer: a ``transformers`` tokenizer (or pass ``renderer``).
      max_length: cap on prompt + completion tokens; completions are cut on the right to fit.
      max_prompt_length: cap on prompt tokens (default: ``max_length - 1``); a longer prompt follows
        ``prompt_overflow``: ``"truncate_left"`` keeps its end (and a leading BOS), ``"drop"``
        returns None, ``"error"`` raises an error naming the row.
      prompt_template, add_eos: see :class:`Renderer`.
      source: the data file, for error messages.
      assistant_only_loss: a conversation (``lm`` messages) is trained on its assistant turns only
        (their end-of-turn token included; :mod:`jaxalign.data.chat_mask`), as TRL's
        ``assistant_only_loss``, and so is a message completion holding other turns (a tool's
        result); false: on every token after the first (a completion: all of it).
      completion_only_loss: a prompt/completion pair is trained on its completion only (true, the
        default) or on the prompt too (false; for a message prompt with ``assistant_only_loss``,
        on the prompt's assistant turns).
      counts: when a dict, incremented per example: ``truncated`` (cut on the right by
        ``max_length``), ``prompt_truncated`` (prompt cut on the left), ``dropped``.

    Returns:
      a dict of int32 numpy arrays (``row``: an int), or None when the example is dropped.
    """
    if prompt_overflow not in PROMPT_OVERFLOW:
        raise JaxalignError(f"prompt_overflow {prompt_overflow!r}: expected one of {', '.join(PROMPT_OVERFLOW)}")
    _check_lengths(max_length, max_prompt_length)
    r = renderer or Renderer(tokenizer, prompt_template=prompt_template, add_eos=add_eos)
    flags: set = set()
    out = _tokenize(example, r, max_length, max_prompt_length, prompt_overflow, source, assistant_only_loss,
                    completion_only_loss, flags)
    if counts is not None:
        for key in flags | ({"dropped"} if out is None else set()):
            counts[key] = counts.get(key, 0) + 1
    return out


def _tokenize(example, r: Renderer, max_length, max_prompt_length, prompt_overflow, source,
              assistant_only_loss, completion_only_loss, flags: set) -> dict | None:
    row = example.row

    def render(field, fn, *args):
        """``fn(*args)``; a chat-template failure becomes an error naming the row and field."""
        try:
            return fn(*args)
        except (ChatTemplateError, PrefixError) as e:
            raise type(e)(str(row_error(source, row, field, str(e)))) from None

    if isinstance(example, LMExample):
        if isinstance(example.text, list) and assistant_only_loss:
            ids, mask = render(None, r.conversation_ids, example.text)
            mask[:1] = [0] * len(mask[:1])  # the first token has no prediction
        else:
            ids = render(None, r.text_ids, example.text)
            mask = [0] + [1] * (len(ids) - 1)
        if max_length is not None and len(ids) > max_length:
            ids, mask = ids[:max_length], mask[:max_length]
            flags.add("truncated")
        return {"input_ids": _i32(ids), "completion_mask": _i32(mask[: len(ids)]), "row": row}

    limit = max_prompt_length
    if limit is None and max_length is not None:
        limit = max_length - 1
    full_prompt = render("prompt", r.prompt_ids, example.prompt)  # completions split off the untruncated prompt
    kept = _fit_prompt(full_prompt, limit, prompt_overflow, r.bos_id, source, row)
    if kept is None:
        return None
    if len(kept) < len(full_prompt):
        flags.add("prompt_truncated")
    p_ids = [full_prompt[j] for j in kept]

    def completion(c, field):
        return render(field, r.completion_ids, example.prompt, c, full_prompt)

    if isinstance(example, PromptExample):
        out = {"prompt_ids": _i32(p_ids), "row": row}
        if example.columns:
            out["columns"] = dict(example.columns)
        return out
    if isinstance(example, PromptCompletionExample):
        p_mask = None
        if not completion_only_loss:
            if isinstance(example.prompt, list) and assistant_only_loss:
                full_mask = render("prompt", assistant_mask, r, example.prompt, True)[1]
            else:
                full_mask = [1] * len(full_prompt)
            p_mask = [full_mask[j] for j in kept]
            p_mask[:1] = [0] * len(p_mask[:1])  # the first token has no prediction
        c_ids = completion(example.completion, "completion")
        c_mask = None
        if assistant_only_loss and isinstance(example.completion, list) and \
                any(m["role"] != "assistant" for m in example.completion):
            c_mask = render("completion", completion_assistant_mask, r, example.prompt, example.completion,
                            full_prompt, c_ids)
        ids, mask = _sequence(p_ids, c_ids, max_length, flags, p_mask, c_mask)
        return {"input_ids": ids, "completion_mask": mask, "row": row}
    if isinstance(example, UnpairedExample):
        ids, mask = _sequence(p_ids, completion(example.completion, "completion"), max_length, flags)
        return {"prompt_ids": _i32(p_ids), "completion_ids": ids[len(p_ids):], "label": bool(example.label),
                "row": row}
    if isinstance(example, PreferenceExample):
        c_ids, c_mask = _sequence(p_ids, completion(example.chosen, "chosen"), max_length, flags)
        r_ids, r_mask = _sequence(p_ids, completion(example.rejected, "rejected"), max_length, flags)
        out = {"prompt_ids": _i32(p_ids), "chosen_ids": c_ids, "chosen_mask": c_mask,
               "rejected_ids": r_ids, "rejected_mask": r_mask, "row": row}
        if example.margin is not None:
            out["margin"] = float(example.margin)
        return out
    if isinstance(example, RankedExample):
        seqs = [_sequence(p_ids, completion(c, "responses"), max_length, flags) for c in example.responses]
        return {"prompt_ids": _i32(p_ids), "response_ids": [s[0] for s in seqs],
                "response_masks": [s[1] for s in seqs], "row": row}
    raise TypeError(f"not a canonical example: {type(example).__name__}")


def tokenize_examples(examples: Iterable[Example], tokenizer, *, max_length: int | None = None,
                      max_prompt_length: int | None = None, prompt_overflow: str = "truncate_left",
                      prompt_template: str | None = None, add_eos: bool = True,
                      source: str = "<data>", skipped: list | None = None, assistant_only_loss: bool = True,
                      completion_only_loss: bool = True, counts: dict | None = None) -> tuple[list[dict], int]:
    """:func:`tokenize_example` over ``examples``: ``(tokenized, n_dropped)`` (dropped: prompts too
    long under ``prompt_overflow="drop"``).

    ``skipped``: when a list, an example the chat template cannot render is left out and its
    one-line reason appended there (``skip_invalid_rows``); otherwise that is an error.
    ``assistant_only_loss``, ``completion_only_loss``, ``counts``: see :func:`tokenize_example`.
    """
    r = Renderer(tokenizer, prompt_template=prompt_template, add_eos=add_eos)
    out, dropped = [], 0
    for ex in examples:
        try:
            t = tokenize_example(ex, max_length=max_length, max_prompt_length=max_prompt_length,
                                 prompt_overflow=prompt_overflow, source=source, renderer=r,
                                 assistant_only_loss=assistant_only_loss,
                                 completion_only_loss=completion_only_loss, counts=counts)
        except ChatTemplateError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
            continue
        if t is None:
            dropped += 1
        else:
            out.append(t)
    return out, dropped


def unpair_preference(tokenized: Iterable[dict]) -> list[dict]:
    """Tokenized preference pairs -> unpaired examples (TRL's ``unpair_preference_dataset``):
    each pair gives its chosen completion labelled true, then its rejected one labelled false,
    with the same prompt ids and ``row``. Tokens are not re-computed: the completion ids are the
    pair's own (``chosen_ids`` minus its prompt), so they equal what an unpaired file holding the
    same texts tokenises to. Other keys (``margin``, ...) are dropped."""
    out = []
    for e in tokenized:
        p = e["prompt_ids"]
        for side, label in (("chosen", True), ("rejected", False)):
            ids = e[f"{side}_ids"]
            out.append({"prompt_ids": p, "completion_ids": ids[len(p):], "label": label, "row": e["row"]})
    return out


def sequence_length(tokenized: dict) -> int:
    """Longest sequence in a tokenized example (what padding has to fit)."""
    if "input_ids" in tokenized:
        return len(tokenized["input_ids"])
    if "completion_ids" in tokenized:
        return len(tokenized["prompt_ids"]) + len(tokenized["completion_ids"])
    if "chosen_ids" in tokenized:
        return max(len(tokenized["chosen_ids"]), len(tokenized["rejected_ids"]))
    if "response_ids" in tokenized:
        return max(len(x) for x in tokenized["response_ids"])
    return len(tokenized["prompt_ids"])
