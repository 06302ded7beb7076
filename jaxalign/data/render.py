"""Rendering rows into token ids with the tokenizer's chat template (or a plain prompt
template): :class:`Renderer`, which :mod:`jaxalign.data.tokenize` uses for every example.
The module docstring of :mod:`jaxalign.data.tokenize` describes the rules it follows."""

from __future__ import annotations

from typing import Sequence

from jaxalign.data.chat_mask import assistant_mask, template_error
from jaxalign.errors import JaxalignError


def _end_of_turn_ids(tokenizer) -> set[int]:
    try:
        from jaxalign.io.tokenizer import eos_token_ids

        ids = set(eos_token_ids(tokenizer))
    except Exception:  # noqa: BLE001 - io is optional here; fall back to the tokenizer's EOS
        ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class Renderer:
    """Renders and tokenises examples with one tokenizer (caches its EOS / BOS behaviour).

    Args:
      tokenizer: a ``transformers`` tokenizer (fast).
      prompt_template: optional template for plain-string prompts, with ``{prompt}`` where the
        prompt goes (e.g. ``"Question: {prompt}\\nAnswer:"``); message prompts use the chat template.
      add_eos: end completions (and ``lm`` texts) with an end-of-turn / EOS token.
    """

    def __init__(self, tokenizer, prompt_template: str | None = None, add_eos: bool = True):
        if prompt_template is not None and "{prompt}" not in prompt_template:
            raise JaxalignError(f"prompt template {prompt_template!r}: must contain '{{prompt}}'")
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.add_eos = add_eos
        self.eos_id = tokenizer.eos_token_id
        if add_eos and self.eos_id is None:
            raise JaxalignError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; "
                                "set add_eos=False or give the tokenizer an EOS token")
        self.end_ids = _end_of_turn_ids(tokenizer)
        # Plain text gets the BOS the tokenizer would add by itself (Llama 2 style); chat renderings
        # never do: their template writes the BOS it wants.
        bos = tokenizer.bos_token_id
        with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        self.bos_id = bos if (bos is not None and with_special[:1] == [bos]) else None
        self._space_ids: dict[int, bool] = {}

    # -- rendering ------------------------------------------------------------------------------

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """Token ids of ``text`` without special tokens (plus BOS when ``bos`` and the tokenizer adds one)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [self.bos_id] + ids if (bos and self.bos_id is not None) else ids

    def chat(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """``messages`` rendered with the tokenizer's chat template, as text."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise JaxalignError(f"tokenizer {getattr(self.tokenizer, 'name_or_path', '')!r} has no chat "
                                "template, but the data has message lists")
        try:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - the template is the tokenizer's code: any failure
            raise template_error(e) from None

    def prompt_text(self, prompt) -> str:
        """The prompt as the model sees it: a string (through the template) or a chat rendering."""
        if isinstance(prompt, str):
            return self.prompt_template.replace("{prompt}", prompt) if self.prompt_template else prompt
        return self.chat(prompt, add_generation_prompt=True)

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of the rendered prompt."""
        return self.encode(self.prompt_text(prompt), bos=isinstance(prompt, str))

    def is_space(self, i: int) -> bool:
        """Whether token ``i`` decodes to whitespace only."""
        if i not in self._space_ids:
            self._space_ids[i] = self.tokenizer.decode([i]).strip() == ""
        return self._space_ids[i]

    def _finish(self, ids: list[int], conversational: bool) -> list[int]:
        if not self.add_eos:
            return ids
        if conversational:
            # The template's end of turn, minus the whitespace it writes after it.
            for j in range(len(ids) - 1, -1, -1):
                if ids[j] in self.end_ids:
                    if all(self.is_space(t) for t in ids[j + 1:]):
                        return ids[: j + 1]
                    break
        if ids and ids[-1] in self.end_ids:
            return ids
        return ids + [self.eos_id]

    def completion_ids(self, prompt, completion, prompt_ids: list[int] | None = None) -> list[int]:
        """Completion ids such that ``prompt_ids + completion_ids`` tokenises the whole text.

        Computed as the suffix of the full rendering's ids after ``prompt_ids`` when those are a
        prefix; otherwise the completion is tokenised on its own.
        """
        if prompt_ids is None:
            prompt_ids = self.prompt_ids(prompt)
        p_text = self.prompt_text(prompt)
        if isinstance(prompt, str):
            full_text = p_text + completion
            full = self.encode(full_text, bos=True)
            alone = completion
        else:
            full_text = self.chat(list(prompt) + list(completion), add_generation_prompt=False)
            full = self.encode(full_text)
            if full_text.startswith(p_text):
                alone = full_text[len(p_text):]
            else:  # a template that renders history differently from the generation prompt
                alone = "".join(m.get("content") or "" for m in completion)
        n = len(prompt_ids)
        if len(full) > n and full[:n] == prompt_ids:
            ids = full[n:]
        else:
            ids = self.encode(alone)
        return self._finish(ids, conversational=not isinstance(prompt, str))

    def text_ids(self, text) -> list[int]:
        """Token ids of a language-modelling text (string or conversation)."""
        if isinstance(text, str):
            return self._finish(self.encode(text, bos=True), conversational=False)
        return self._finish(self.encode(self.chat(text, add_generation_prompt=False)), conversational=True)

    def conversation_ids(self, messages) -> tuple[list[int], list[int]]:
        """``(ids, mask)`` of a whole conversation: :meth:`text_ids`' ids, and 1 on the tokens of its
        assistant turns (see :mod:`jaxalign.data.chat_mask`)."""
        ids, mask = assistant_mask(self, messages, add_generation_prompt=False)
        done = self._finish(ids, conversational=True)
        # An EOS appended after the last turn belongs to that turn (trained when it is the assistant's).
        return done, mask[: len(done)] + mask[-1:] * max(len(done) - len(ids), 0)
