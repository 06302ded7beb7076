"""A prompt row's other columns (e.g. ``answer``) survive loading, tokenising and batching, so the
online algorithms can hand them to the reward: examples carry them, batches carry the source
``row`` (arrays only), and the lookup repeats each prompt's values for its samples."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.data import (BatchIterator, batch_columns, columns_by_row, full_batches, prepare_dataset,
                           train_eval_split)
from jaxalign.data.formats import PromptExample, to_examples
from jaxalign.errors import JaxalignError
from tests.data.conftest import write_rows

ROWS = [{"prompt": "1+1?", "answer": 2, "level": "easy"},
        {"prompt": "2*3?", "answer": 6, "level": "easy"},
        {"prompt": "7*8?", "answer": 56, "level": "hard"},
        {"prompt": "9-4?", "answer": 5, "level": None}]


def test_prompt_examples_carry_the_other_columns():
    ex, _ = to_examples(ROWS, "auto")
    assert [e.columns for e in ex] == [{k: v for k, v in r.items() if k != "prompt"} for r in ROWS]
    # Carried along, not part of the example's identity.
    assert ex[0] == PromptExample("1+1?", 0) and hash(ex[0]) == hash(PromptExample("1+1?", 0))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_columns_survive_loading_and_batching(tmp_path, tok, kind):
    path = tmp_path / f"p.{kind}"
    write_rows(ROWS, path, kind)
    tokenized, _ = prepare_dataset(path, tok, max_length=32, max_prompt_length=16)
    table = columns_by_row(tokenized)
    want = [r["answer"] if kind != "csv" else str(r["answer"]) for r in ROWS]  # CSV cells are text
    assert [table[i]["answer"] for i in range(4)] == want
    it = BatchIterator(tokenized, 2, seed=3, pad_id=tok.pad_token_id)
    for _ in range(3):
        b = next(it)
        assert b["row"].dtype == np.int32 and all(isinstance(v, np.ndarray) for v in b.values())
        # The row ids name the prompts in the batch.
        texts = [tok.decode(ids[m > 0]) for ids, m in zip(b["prompt_ids"], b["prompt_mask"])]
        assert texts == [ROWS[r]["prompt"] for r in b["row"]]


def test_batch_columns_repeat_each_prompt_for_its_samples():
    table = columns_by_row([{"prompt_ids": np.zeros(1, np.int32), "row": r, "columns": c}
                            for r, c in [(7, {"answer": 1, "a": "x"}), (3, {"answer": 2})]])
    got = batch_columns(table, np.array([3, 7], np.int32), repeat=3)
    assert got == {"answer": [2, 2, 2, 1, 1, 1], "a": [None, None, None, "x", "x", "x"]}
    assert batch_columns(table, None, 2) == {} and batch_columns({}, np.array([1]), 2) == {}
    with pytest.raises(JaxalignError, match="distinct 'row' ids"):
        columns_by_row([{"prompt_ids": np.zeros(1, np.int32), "columns": {"answer": a}} for a in (1, 2)])


def test_the_held_out_split_and_full_batches_keep_the_rows(tok):
    tokenized, _ = prepare_dataset_from(ROWS, tok)
    train, ev = train_eval_split(tokenized, 0.5, seed=0)
    assert {e["row"] for e in train} | {e["row"] for e in ev} == {0, 1, 2, 3}
    table = columns_by_row(ev)
    (_, b, real), = list(full_batches(ev, 4, tok.pad_token_id))  # padded with repeats of the last
    assert real == 2 and b["row"].tolist() == [e["row"] for e in ev] + [ev[-1]["row"]] * 2
    assert batch_columns(table, b["row"])["answer"] == [ROWS[r]["answer"] for r in b["row"]]


def test_prompts_without_other_columns_batch_as_before(tok):
    tokenized, _ = prepare_dataset_from([{"prompt": "a"}, {"prompt": "b"}], tok)
    assert all(set(t) == {"prompt_ids", "row"} for t in tokenized)
    b = next(BatchIterator(tokenized, 2, shuffle=False, pad_id=tok.pad_token_id))
    assert sorted(b) == ["prompt_ids", "prompt_mask"]


def prepare_dataset_from(rows, tok):
    from jaxalign.data.tokenize import tokenize_examples

    examples, _ = to_examples(rows, "auto")
    return tokenize_examples(examples, tok, max_length=32, max_prompt_length=16)
