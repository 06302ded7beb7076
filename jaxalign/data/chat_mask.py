"""Which tokens of a rendered conversation are the assistant's: the loss mask of chat SFT.

Two ways to find them, the tokenizer's own first:

1. The chat template marks assistant text with ``{% generation %} ... {% endgeneration %}``
   (TRL's and transformers' convention): ``apply_chat_template(..., return_assistant_tokens_mask=True)``
   returns the mask, and the template's author decided what it covers.
2. Otherwise (most shipped templates, SmolLM2's and Llama's among them) the conversation is
   rendered prefix by prefix: for assistant message ``i``, ``messages[:i]`` with the generation
   prompt and ``messages[:i+1]`` without it; the assistant's tokens are the span between the two,
   up to and including its end-of-turn token (whitespace the template writes after that token,
   ChatML's ``"\\n"``, is not the assistant's: no ``{% generation %}`` block in TRL's templates
   covers it either). This holds only when every prefix's tokens start the whole conversation's
   tokens; a template that renders earlier turns differently once later ones follow (Qwen3 drops
   past reasoning) breaks it, and that is a one-line error naming the row, never a silently wrong
   mask.
"""

from __future__ import annotations

import re
from typing import Sequence

from jaxalign.errors import JaxalignError

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(JaxalignError):
    """The tokenizer's chat template could not render a conversation (a template error, e.g.
    ``raise_exception('roles must alternate')`` or a message without the key it reads)."""


class PrefixError(JaxalignError):
    """The chat template does not render a conversation prefix by prefix, so the fallback cannot
    find the assistant's tokens (not a bad row: never skipped by ``skip_invalid_rows``)."""


_HINT = ("; use a chat template with {% generation %} markers (data.chat_template) or set "
         "sft.assistant_only_loss: false")


def template_error(e: Exception) -> ChatTemplateError:
    """A chat template's exception as one line."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return ChatTemplateError(f"the chat template cannot render this conversation ({type(e).__name__}: {msg[:200]})")


def has_generation_markers(template) -> bool:
    """Whether a chat template marks assistant text with ``{% generation %}``."""
    return isinstance(template, str) and _GENERATION.search(template) is not None


def assistant_mask(renderer, messages: Sequence[dict],
                   add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """``(ids, mask)``: the tokens of ``messages`` rendered with the chat template (equal to
    ``renderer.encode(renderer.chat(messages, add_generation_prompt))``) and 1 on the tokens of
    every assistant turn, its end-of-turn token included.

    Raises:
      ChatTemplateError: the template cannot render the conversation.
      PrefixError: no ``{% generation %}`` markers and the prefix renderings are not prefixes.
    """
    if has_generation_markers(getattr(renderer.tokenizer, "chat_template", None)):
        return _template_mask(renderer, messages, add_generation_prompt)
    return prefix_mask(renderer, messages, add_generation_prompt)


def _template_mask(renderer, messages, add_generation_prompt):
    try:
        out = renderer.tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - the template is the tokenizer's code: any failure
        raise template_error(e) from None
    ids, mask = list(out["input_ids"]), [int(bool(m)) for m in out["assistant_masks"]]
    return ids, mask


def prefix_mask(renderer, messages: Sequence[dict],
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """The fallback of :func:`assistant_mask`, for templates without ``{% generation %}``
    (public so that tests can compare it with the marked template's mask)."""
    messages = list(messages)
    full = renderer.encode(renderer.chat(messages, add_generation_prompt))
    mask = [0] * len(full)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        if i == 0:
            # transformers renders no empty conversation, so where the first turn's text starts is unknown.
            raise PrefixError("message 0 is an assistant turn; without {% generation %} markers in the chat "
                              "template its tokens cannot be told from the template's preamble" + _HINT)
        start = renderer.encode(renderer.chat(messages[:i], True))
        end = renderer.encode(renderer.chat(messages[: i + 1], False))
        if full[: len(start)] != start or end[: len(start)] != start:
            raise PrefixError(f"message {i} (assistant): the conversation up to it, rendered with the "
                              "generation prompt, is not how the whole conversation begins" + _HINT)
        if full[: len(end)] != end or len(end) <= len(start):
            raise PrefixError(f"message {i} (assistant): the chat template renders it differently once "
                              "later messages follow" + _HINT)
        stop = _end_of_turn(renderer, end, len(start))
        for j in range(len(start), stop):
            mask[j] = 1
    return full, mask


def completion_assistant_mask(renderer, prompt: Sequence[dict], completion: Sequence[dict],
                              prompt_ids: list[int], completion_ids: list[int]) -> list[int]:
    """Mask over ``completion_ids`` (the tokens after ``prompt_ids``) with 1 on assistant turns only:
    for a completion that holds other turns too (an assistant tool call, the tool's result, the
    assistant's answer), which are the conversation's context, not the model's output."""
    ids, mask = assistant_mask(renderer, list(prompt) + list(completion), False)
    n, k = len(prompt_ids), len(completion_ids)
    shared = min(k, len(ids) - n)
    if ids[:n] != list(prompt_ids) or ids[n: n + shared] != list(completion_ids[:shared]):
        raise PrefixError("the completion's tokens are not the rendered conversation's tokens after the "
                          "prompt's, so its assistant turns cannot be found" + _HINT)
    # An EOS appended after the last turn belongs to that turn.
    return mask[n: n + shared] + mask[n + shared - 1: n + shared] * (k - shared)


def _end_of_turn(renderer, ids: list[int], start: int) -> int:
    """End (exclusive) of the assistant span ``ids[start:]``: after its last end-of-turn token
    when only whitespace follows that token, else the whole span."""
    for j in range(len(ids) - 1, start - 1, -1):
        if ids[j] in renderer.end_ids:
            if all(renderer.is_space(t) for t in ids[j + 1:]):
                return j + 1
            break
    return len(ids)
