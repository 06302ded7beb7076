"""The shipped tiny datasets and tokenizer: they load, are unique, carry their planted signal, and
are exactly what scripts/make_tiny_data.py writes; the arithmetic word problems are exactly what
scripts/make_arith_data.py writes, and their answers are right."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign.data import SHIPPED, BatchIterator, prepare_dataset, shipped_path, tiny_tokenizer_path
from jaxalign.data.loading import load_examples

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"sft_tiny.jsonl": ("prompt_completion", 64), "preference_tiny.jsonl": ("preference", 64),
            "ranked_tiny.jsonl": ("ranked", 48), "prompts_tiny.jsonl": ("prompt_only", 64),
            "movie_prompts.jsonl": ("prompt_only", 300), "arith_train.jsonl": ("prompt_only", 240),
            "arith_heldout.jsonl": ("prompt_only", 60)}
# Written by hand, not by scripts/make_tiny_data.py (tested in tests/examples/test_demo.py).
HANDWRITTEN = {"movie_prompts.jsonl"}
# The APE tasks (ape/*.jsonl), written by hand for the project (tested in tests/ape).
HANDWRITTEN_DIRS = {"ape"}
# Written by scripts/make_arith_data.py (tested below).
ARITH = {"arith_train.jsonl", "arith_heldout.jsonl"}


def raw_rows(name):
    return [json.loads(line) for line in shipped_path(name).read_text().splitlines()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_load_and_are_unique(name):
    fmt, n = EXPECTED[name]
    examples, reasons = load_examples(shipped_path(name))
    assert reasons == [] and len(examples) == n
    from jaxalign.data.formats import example_format

    assert {example_format(e) for e in examples} == {fmt}
    rows = [json.dumps(r, sort_keys=True) for r in raw_rows(name)]
    assert len(set(rows)) == len(rows)
    assert len({json.dumps(r.get("prompt"), sort_keys=True) for r in raw_rows(name)}) == len(rows)


def test_sft_has_conversational_rows():
    rows = raw_rows("sft_tiny.jsonl")
    assert sum(isinstance(r["prompt"], list) for r in rows) == 16


def test_tiny_tokenizer(tok):
    assert len(tok) == 260
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [0, 1, 2, 3]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2, "<|pad|>", 3)
    assert tok.bos_token_id is None
    assert tok("Hi!")["input_ids"] == [ord("H") + 4, ord("i") + 4, ord("!") + 4]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (tiny_tokenizer_path() / "tokenizer.json").is_file()


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_tiny_tokenizer_round_trips_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < 260 for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_in_text_are_single_tokens(tok):
    assert tok("a<|im_end|>b")["input_ids"] == [ord("a") + 4, 2, ord("b") + 4]


def test_preference_signal_is_planted(tok):
    rows = raw_rows("preference_tiny.jsonl")
    positive = {"wonderful", "loved", "great", "lovely", "enjoyed", "delight", "excellent", "happy"}
    negative = {"awful", "hated", "terrible", "bad", "worst", "dreadful", "disliked", "horrible"}
    for r in rows:
        words = lambda s: set(s.lower().replace(",", " ").replace("!", " ").replace(".", " ").split())  # noqa: E731
        assert words(r["chosen"]) & positive and not words(r["chosen"]) & negative
        assert words(r["rejected"]) & negative and not words(r["rejected"]) & positive
        for field in ("prompt", "chosen", "rejected"):
            assert len(tok(r[field])["input_ids"]) < 48


def test_ranked_signal_is_planted():
    ks = []
    for r in raw_rows("ranked_tiny.jsonl"):
        counts = [r["responses"][i].split().count("good") for i in r["ranking"]]
        assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
        ks.append(len(r["responses"]))
    assert set(ks) == {3, 4}
    assert sum(r["ranking"] != sorted(r["ranking"]) for r in raw_rows("ranked_tiny.jsonl")) > 40


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_batch(tok, name):
    tokenized, stats = prepare_dataset(shipped_path(name), tok, max_length=128, max_prompt_length=64)
    assert stats.skipped == 0 and stats.dropped == 0
    b = next(BatchIterator(tokenized, 8, seed=0, pad_id=tok.pad_token_id, buckets="pow2", max_length=128))
    assert all(v.dtype in (np.int32, np.float32) for v in b.values())


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_reproduces_the_shipped_files(tmp_path):
    _script("make_tiny_data").main(["--out", str(tmp_path)])
    shipped = shipped_path()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(shipped) for p in shipped.rglob("*")
                             if p.is_file() and p.name not in HANDWRITTEN | ARITH
                             and p.relative_to(shipped).parts[0] not in HANDWRITTEN_DIRS)
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel


def test_arith_script_reproduces_the_shipped_files(tmp_path):
    _script("make_arith_data").main(["--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ARITH)
    for name in ARITH:
        assert (tmp_path / name).read_bytes() == shipped_path(name).read_bytes(), name


# Each template's question, solved from its words (independently of the script's arithmetic).
_SOLVERS = [
    (r"has (\d+) \w+\. \w+ gets (\d+) more", lambda a, b: a + b),
    (r"had (\d+) \w+ and gave (\d+) of them", lambda a, b: a - b),
    (r"buys (\d+) bags of \w+\. Each bag holds (\d+)", lambda a, b: a * b),
    (r"shares (\d+) \w+ equally among (\d+) friends", lambda a, b: a // b if a % b == 0 else None),
    (r"has (\d+) \w+, finds (\d+) more and then loses (\d+)", lambda a, b, c: a + b - c),
    (r"has (\d+) boxes with (\d+) \w+ in each box and (\d+) loose", lambda a, b, c: a * b + c),
    (r"costs (\d+) dollars\. \w+ buys (\d+) of them and pays with a (\d+)-dollar bill", lambda a, b, c: c - a * b),
    (r"has (\d+) pages\. \w+ reads (\d+) pages a day for (\d+) days", lambda c, a, b: c - a * b),
    (r"has (\d+) \w+ and \w+ has (\d+) \w+\. How many \w+ do they have together", lambda a, b: a + b),
    (r"has (\d+) \w+\. \w+ has (\d+) times as many", lambda a, k: a * k),
]


def _solve(question: str):
    hits = [(i, m) for i, (rx, _) in enumerate(_SOLVERS) if (m := re.search(rx, question))]
    assert len(hits) == 1, question
    i, m = hits[0]
    return i, _SOLVERS[i][1](*map(int, m.groups()))


def test_arith_answers_are_right_and_the_splits_share_every_template():
    templates = {}
    for name in sorted(ARITH):
        rows = raw_rows(name)
        for r in rows:
            assert set(r) == {"prompt", "answer"} and [m["role"] for m in r["prompt"]] == ["user"]
            question = r["prompt"][0]["content"]
            assert question.endswith(" Answer with a number.")
            kind, answer = _solve(question)
            assert r["answer"] == answer and answer > 0, question
            templates.setdefault(name, []).append(kind)
    train, held = templates["arith_train.jsonl"], templates["arith_heldout.jsonl"]
    assert {k: train.count(k) for k in set(train)} == {k: 24 for k in range(10)}
    assert {k: held.count(k) for k in set(held)} == {k: 6 for k in range(10)}
    questions = [json.dumps(r["prompt"]) for n in sorted(ARITH) for r in raw_rows(n)]
    assert len(set(questions)) == 300  # no question in both splits


def test_arith_rows_carry_their_answer_to_the_batches(tok):
    from jaxalign.data import batch_columns, columns_by_row

    tokenized, _ = prepare_dataset(shipped_path("arith_heldout.jsonl"), tok, max_length=256, max_prompt_length=192)
    b = next(BatchIterator(tokenized, 4, shuffle=False, pad_id=tok.pad_token_id))
    assert batch_columns(columns_by_row(tokenized), b["row"], 2)["answer"] == \
        [r["answer"] for r in raw_rows("arith_heldout.jsonl")[:4] for _ in range(2)]
