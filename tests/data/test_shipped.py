"""The shipped tiny datasets and tokenizer: they load, are unique, carry their planted signal, and
are exactly what scripts/make_tiny_data.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign.data import SHIPPED, BatchIterator, prepare_dataset, shipped_path, tiny_tokenizer_path
from jaxalign.data.loading import load_examples

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"sft_tiny.jsonl": ("prompt_completion", 64), "preference_tiny.jsonl": ("preference", 64),
            "ranked_tiny.jsonl": ("ranked", 48), "prompts_tiny.jsonl": ("prompt_only", 64),
            "movie_prompts.jsonl": ("prompt_only", 300)}
# Written by hand, not by scripts/make_tiny_data.py (tested in tests/examples/test_demo.py).
HANDWRITTEN = {"movie_prompts.jsonl"}


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


def test_script_reproduces_the_shipped_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny_data", ROOT / "scripts" / "make_tiny_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--out", str(tmp_path)])
    shipped = shipped_path()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(shipped) for p in shipped.rglob("*")
                             if p.is_file() and p.name not in HANDWRITTEN)
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel
