"""APE's scores against plain per-example references: the teacher-forced log-prob of the output
(one unpadded sequence at a time, NumPy float64 log-softmax, tokens from the whole rendered
text) and exact match from a plain greedy loop (a full forward per token, no KV cache)."""

import numpy as np

from jaxalign import forward_logits
from jaxalign.ape.score import Scorer
from jaxalign.ape.templates import eval_user

ROWS = [("hot", "cold"), ("up", "down"), ("open", "closed")]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _chat(tokenizer, instruction, x):
    return tokenizer.apply_chat_template([{"role": "user", "content": eval_user(instruction, x)}],
                                         tokenize=False, add_generation_prompt=True)


def test_logprobs_equal_a_per_example_teacher_forced_sum(model, tokenizer):
    scorer = Scorer(model, tokenizer, batch_size=2)  # 3 rows: a full batch and a padded one
    for instruction in ("Give the opposite.", None):
        got = scorer.logprobs(instruction, ROWS)
        for (x, y), g in zip(ROWS, got):
            ids = tokenizer(_chat(tokenizer, instruction, x) + y + "<|im_end|>", add_special_tokens=False)["input_ids"]
            n = len(tokenizer(y, add_special_tokens=False)["input_ids"]) + 1
            lsm = _log_softmax(np.asarray(forward_logits(model, np.asarray([ids])), np.float64)[0])
            expect = sum(lsm[t - 1, ids[t]] for t in range(len(ids) - n, len(ids)))
            np.testing.assert_allclose(g, expect, rtol=1e-5, atol=1e-4)


def test_exact_match_is_the_greedy_answer_compared(model, tokenizer):
    scorer = Scorer(model, tokenizer, batch_size=4, answer_tokens=3)
    answers = scorer.answers("Say it.", ROWS)
    for (x, _), a in zip(ROWS, answers):
        ids = tokenizer(_chat(tokenizer, "Say it.", x), add_special_tokens=False)["input_ids"]
        out = []
        for _ in range(3):
            nxt = int(np.argmax(np.asarray(forward_logits(model, np.asarray([ids + out])))[0, -1]))
            out.append(nxt)
            if nxt in (0, 2):  # <|endoftext|>, <|im_end|>
                break
        assert a == tokenizer.decode(out, skip_special_tokens=True)
    # Rows whose desired output is the model's own greedy answer match; the others do not.
    rows = [(x, a if i % 2 == 0 else "zz" + a) for i, ((x, _), a) in enumerate(zip(ROWS, answers))]
    assert scorer.exact_match("Say it.", rows).tolist() == [1.0, 0.0, 1.0]
