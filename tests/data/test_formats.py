"""jaxalign.data.formats: every format from JSONL / JSON / Parquet / CSV, detection, validation."""

from __future__ import annotations

import json
import logging

import pytest

from jaxalign.data import formats as F
from jaxalign.data.formats import to_examples
from jaxalign.data.loading import load_dataset_rows
from jaxalign.errors import JaxalignError
from tests.data.conftest import write_rows


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


PLAIN = {
    "lm": [{"text": "hello world"}, {"text": "a second text"}],
    "prompt_completion": [{"prompt": "Q: 1+1?\nA:", "completion": " 2."},
                          {"prompt": "Q: 2+2?\nA:", "completion": " 4."}],
    "prompt_only": [{"prompt": "Tell me a story."}, {"prompt": "The movie was"}],
    "preference": [{"prompt": "How was it?", "chosen": " Great!", "rejected": " Bad."},
                   {"prompt": "And the food?", "chosen": " Tasty.", "rejected": " Awful."}],
    "ranked": [{"prompt": "Rate it.", "responses": ["ok", "good", "bad"], "ranking": [1, 0, 2]},
               {"prompt": "Again.", "responses": ["b", "a"], "ranking": [1, 0]}],
    "unpaired": [{"prompt": "How was it?", "completion": " Great!", "label": True},
                 {"prompt": "And the food?", "completion": " Awful.", "label": False}],
}
CHAT = {
    "lm": [{"text": msgs(("user", "hi"), ("assistant", "hello"))},
           {"text": msgs(("system", "be brief"), ("user", "yo"), ("assistant", "hey"))}],
    "prompt_completion": [{"prompt": msgs(("user", "hi")), "completion": msgs(("assistant", "hello"))},
                          {"prompt": msgs(("system", "s"), ("user", "q")), "completion": msgs(("assistant", "a"))}],
    "prompt_only": [{"prompt": msgs(("user", "hi"))}, {"prompt": msgs(("system", "s"), ("user", "q"))}],
    "preference": [{"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "hello!")),
                    "rejected": msgs(("assistant", "go away"))},
                   {"prompt": msgs(("user", "q")), "chosen": msgs(("assistant", "yes")),
                    "rejected": msgs(("assistant", "no"))}],
    "ranked": [{"prompt": msgs(("user", "rate")), "responses": [msgs(("assistant", "x")), msgs(("assistant", "y"))],
                "ranking": [1, 0]},
               {"prompt": msgs(("user", "again")), "responses": [msgs(("assistant", "p")), msgs(("assistant", "q")),
                                                                 msgs(("assistant", "r"))], "ranking": [2, 0, 1]}],
    "unpaired": [{"prompt": msgs(("user", "hi")), "completion": msgs(("assistant", "hello!")), "label": True},
                 {"prompt": msgs(("system", "s"), ("user", "q")), "completion": msgs(("assistant", "no")),
                  "label": False}],
}


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv"])
@pytest.mark.parametrize("fmt", F.FORMATS)
@pytest.mark.parametrize("variant", ["plain", "chat"])
def test_every_format_loads_from_every_file_type(tmp_path, kind, fmt, variant):
    rows = (PLAIN if variant == "plain" else CHAT)[fmt]
    path = write_rows(rows, tmp_path / f"d.{kind}", kind)
    loaded = load_dataset_rows(path, cache_dir=str(tmp_path / "cache"))
    examples, skipped = to_examples(loaded, "auto", str(path))
    expected, _ = to_examples(rows, fmt)
    assert skipped == 0
    assert examples == expected
    assert F.example_format(examples[0]) == fmt


def test_ranked_examples_are_sorted_best_first():
    (ex,), _ = to_examples(PLAIN["ranked"][:1])
    assert ex.responses == ("good", "ok", "bad")


def test_mixed_plain_and_chat_rows_in_one_jsonl(tmp_path):
    """datasets types such a column as Json and re-parses strings (" 3." -> 3.0); we must not."""
    rows = [{"prompt": "Q: 1+2?\nA:", "completion": " 3."}, {"prompt": "x", "completion": "true"},
            CHAT["prompt_completion"][0]]
    path = write_rows(rows, tmp_path / "m.jsonl", "jsonl")
    examples, _ = to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
    assert examples[0].completion == " 3." and examples[1].completion == "true"
    assert examples[2].completion == msgs(("assistant", "hello"))


def test_saved_dataset_dir_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list(PLAIN["preference"]).save_to_disk(str(tmp_path / "ds"))
    examples, _ = to_examples(load_dataset_rows(tmp_path / "ds"), "auto", "ds")
    assert [e.chosen for e in examples] == [" Great!", " Tasty."]


def test_json_object_with_one_list_field(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": PLAIN["prompt_only"]}))
    examples, _ = to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
    assert [e.prompt for e in examples] == ["Tell me a story.", "The movie was"]


@pytest.mark.parametrize("name", ["nope.jsonl", "nope.txt"])
def test_missing_or_unknown_files(tmp_path, name):
    with pytest.raises(JaxalignError, match="no such file"):
        load_dataset_rows(tmp_path / name)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(JaxalignError, match="unknown data file type"):
        load_dataset_rows(tmp_path / "x.txt")


def test_csv_keeps_digits_and_empty_cells_as_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\n123,456\nhello,\n")
    with pytest.raises(JaxalignError) as e:
        to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
    assert str(e.value) == f"{path}: row 1 (0-based): field 'completion': empty string"
    examples, n = to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path),
                              skip_invalid_rows=True)
    assert n == 1 and examples[0].prompt == "123" and examples[0].completion == "456"


# ----------------------------------------------------------------------------------------------
# detection


@pytest.mark.parametrize("row, fmt", [
    ({"text": "a"}, "lm"), ({"messages": msgs(("user", "a"))}, "lm"),
    ({"prompt": "a", "completion": "b"}, "prompt_completion"), ({"prompt": "a", "id": 3}, "prompt_only"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"), ({"chosen": "b", "rejected": "c"}, "preference"),
    ({"prompt": "a", "responses": ["b"], "ranking": [0]}, "ranked"),
    ({"prompt": "a", "completion": "b", "chosen": None}, "prompt_completion"),  # nulls do not count
    ({"prompt": "a", "completion": "b", "label": False}, "unpaired"),
    ({"prompt": "a", "completion": "b", "label": None}, "prompt_completion"),
])
def test_detect_format(row, fmt):
    assert F.detect_format(row) == fmt


def test_ambiguous_and_unknown_formats_are_clear_errors():
    with pytest.raises(JaxalignError, match=r"row 0 \(0-based\) has the fields of both 'preference'.*ambiguous"):
        to_examples([{"prompt": "a", "completion": "b", "chosen": "c", "rejected": "d"}], "auto", "f.jsonl")
    with pytest.raises(JaxalignError, match=r"f.jsonl: cannot tell the data format .*\['answer', 'question'\]"):
        to_examples([{"question": "a", "answer": "b"}], "auto", "f.jsonl")
    with pytest.raises(JaxalignError, match="data format 'dpo'"):
        to_examples([{"text": "a"}], "dpo")
    with pytest.raises(JaxalignError, match="no rows"):
        to_examples([], "auto", "f.jsonl")


def test_format_aliases_and_explicit_format_ignores_extra_fields():
    ex, _ = to_examples(PLAIN["preference"], "prompt-only")
    assert ex[0] == F.PromptExample("How was it?", 0)
    assert F.normalize_format("SFT") == "prompt_completion"


# ----------------------------------------------------------------------------------------------
# validation details


def err(rows, fmt="auto", **kw):
    with pytest.raises(JaxalignError) as e:
        to_examples(rows, fmt, "data/x.jsonl", **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_error_message_shape():
    rows = [PLAIN["preference"][0]] * 17 + [{"prompt": "p", "chosen": 5, "rejected": "r"}]
    assert err(rows) == ("data/x.jsonl: row 17 (0-based): field 'chosen': expected a string or a list of "
                         "messages, got int")


@pytest.mark.parametrize("bad, field, what", [
    ({"prompt": "p", "completion": ""}, "completion", "empty string"),
    ({"prompt": "  \n", "completion": "c"}, "prompt", "empty string"),
    ({"prompt": "p"}, "completion", "missing"),
    ({"prompt": None, "completion": "c"}, "prompt", "missing (null)"),
    ({"prompt": "p", "completion": 1.5}, "completion", "got float"),
    ({"prompt": "p", "completion": {"a": 1}}, "completion", "got dict"),
    ({"prompt": [], "completion": "c"}, "prompt", "empty list of messages"),
    ({"prompt": [{"role": "bot", "content": "x"}], "completion": "c"}, "prompt", "message 0: role 'bot'"),
    ({"prompt": [{"content": "x"}], "completion": "c"}, "prompt", "message 0: missing 'role'"),
    ({"prompt": [{"role": "user"}], "completion": "c"}, "prompt", "message 0: missing 'content'"),
    ({"prompt": [{"role": "user", "content": 3}], "completion": "c"}, "prompt", "'content' expected a string"),
    ({"prompt": ["hi"], "completion": "c"}, "prompt", "message 0: expected an object"),
    ({"prompt": msgs(("user", "q"), ("assistant", "a")), "completion": "c"}, "prompt", "assistant turn"),
    ({"prompt": msgs(("user", "q")), "completion": msgs(("user", "a"))}, "completion", "starts with an assistant"),
    ({"prompt": "q", "completion": msgs(("assistant", "a"))}, "completion", "'prompt' is a string"),
    ({"prompt": "p\udcff", "completion": "c"}, "prompt", "not valid UTF-8"),
])
def test_prompt_completion_errors(bad, field, what):
    msg = err([PLAIN["prompt_completion"][0], bad], "prompt_completion")
    assert msg.startswith(f"data/x.jsonl: row 1 (0-based): field '{field}': ")
    assert what in msg


@pytest.mark.parametrize("bad, field, what", [
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, float("nan")]}, "ranking", "nan"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "ranking", "not a permutation"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1, 2]}, "ranking", "not a permutation"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [True, 0]}, "ranking", "got bool"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0.5, 1]}, "ranking", "0.5"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": "01"}, "ranking", "got str"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "responses", "at least 2"),
    ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "responses[1]", "empty string"),
    ({"prompt": "p", "responses": "ab", "ranking": [0, 1]}, "responses", "got str"),
    ({"prompt": "p", "responses": ["a", "b"]}, "ranking", "missing"),
])
def test_ranked_errors(bad, field, what):
    msg = err([PLAIN["ranked"][0], bad], "ranked")
    assert msg.startswith(f"data/x.jsonl: row 1 (0-based): field '{field}': ")
    assert what in msg


@pytest.mark.parametrize("bad, field, what", [
    ({"prompt": "p", "completion": "c", "label": 1}, "label", "expected true or false, got int 1"),
    ({"prompt": "p", "completion": "c", "label": 0.0}, "label", "expected true or false, got float 0.0"),
    ({"prompt": "p", "completion": "c", "label": "yes"}, "label", "expected true or false, got str 'yes'"),
    ({"prompt": "p", "completion": "c", "label": [True]}, "label", "expected true or false, got list"),
    ({"prompt": "p", "completion": "c", "label": None}, "label", "missing (null)"),
    ({"prompt": "p", "completion": "c"}, "label", "missing"),
    ({"prompt": "p", "completion": "", "label": True}, "completion", "empty string"),
    ({"completion": "c", "label": True}, "prompt", "missing"),
    ({"prompt": msgs(("user", "q")), "completion": msgs(("user", "a")), "label": True}, "completion",
     "starts with an assistant"),
])
def test_unpaired_errors(bad, field, what):
    msg = err([PLAIN["unpaired"][0], bad], "unpaired")
    assert msg.startswith(f"data/x.jsonl: row 1 (0-based): field '{field}': ")
    assert what in msg


def test_unpaired_labels_in_csv_cells_are_text(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\nq,a,true\nq,b,FALSE\nq,c,1\n")
    rows = load_dataset_rows(path, cache_dir=str(tmp_path / "c"))
    with pytest.raises(JaxalignError) as e:
        to_examples(rows, "auto", str(path))
    assert str(e.value) == f"{path}: row 2 (0-based): field 'label': expected true or false, got str '1'"
    examples, n = to_examples(rows, "auto", str(path), skip_invalid_rows=True)
    assert n == 1 and [(x.completion, x.label) for x in examples] == [("a", True), ("b", False)]
    assert F.normalize_format("unpaired-preference") == "unpaired"


def test_integral_float_ranking_is_accepted():
    (ex,), _ = to_examples([{"prompt": "p", "responses": ["a", "b"], "ranking": [1.0, 0.0]}], "ranked")
    assert ex.responses == ("b", "a")


def test_preference_margin():
    rows = [dict(PLAIN["preference"][0], margin=1.5), dict(PLAIN["preference"][1], margin=0)]
    ex, _ = to_examples(rows)
    assert [e.margin for e in ex] == [1.5, 0.0]
    assert "field 'margin': expected a finite number, got nan" in err(
        [rows[0], dict(rows[1], margin=float("nan"))])
    assert "field 'margin': missing (row 0 has a margin" in err([rows[0], PLAIN["preference"][1]])


def test_identical_chosen_rejected_is_dropped_with_a_warning(caplog):
    """A pair whose rejected equals its chosen is no preference: a warning and a count, not an error."""
    p = PLAIN["preference"]
    same = [{"prompt": "p", "chosen": "a", "rejected": "a"},                             # explicit prompt
            {"chosen": "Q: x? A: yes", "rejected": "Q: x? A: yes"},                     # implicit prompt
            {"prompt": msgs(("user", "q")), "chosen": "ok", "rejected": msgs(("assistant", "ok"))}]
    rows = [p[0], same[0], p[1], same[1]]
    with caplog.at_level(logging.WARNING, logger="jaxalign.data"):
        examples, n_skipped = to_examples(rows, "auto", "data/x.jsonl")
    assert [e.row for e in examples] == [0, 2] and n_skipped == 0
    assert "data/x.jsonl: dropped 2 preference row(s) whose 'rejected' is identical to 'chosen' " \
           "(rows 1, 3, 0-based)" in caplog.text
    # A string and the same text as one assistant message are the same completion.
    examples, _ = to_examples([CHAT["preference"][0], same[2]], "preference")
    assert [e.row for e in examples] == [0]
    # Other problems in such a row are still errors; a file of nothing but identical pairs is one too.
    assert "field 'prompt'" in err([p[0], {"prompt": 3, "chosen": "a", "rejected": "a"}])
    assert err([same[0]] * 3) == ("data/x.jsonl: every row was dropped: 'rejected' is identical to "
                                  "'chosen' in all 3 rows")


def test_prepare_dataset_counts_identical_pairs(tmp_path, tok):
    from jaxalign.data import prepare_dataset

    p = PLAIN["preference"]
    rows = [p[0], dict(p[0], rejected=p[0]["chosen"]), p[1], {"prompt": 7, "chosen": "a", "rejected": "b"},
            dict(p[1], chosen=p[1]["rejected"])]
    path = write_rows(rows, tmp_path / "pairs.jsonl", "jsonl")
    tokenized, stats = prepare_dataset(path, tok, skip_invalid_rows=True)
    assert (stats.rows, stats.examples, stats.skipped, stats.identical) == (5, 2, 1, 2)
    assert len(tokenized) == 2


def test_implicit_prompt_strings_split_at_a_word_boundary():
    (ex,), _ = to_examples([{"chosen": "Q: how was it?\nA: I like cats", "rejected": "Q: how was it?\nA: I like cars"}])
    assert ex.prompt == "Q: how was it?\nA: I like"
    assert (ex.chosen, ex.rejected) == (" cats", " cars")
    (ex,), _ = to_examples([{"chosen": "The movie was great", "rejected": "The movie was awful"}])
    assert (ex.prompt, ex.chosen, ex.rejected) == ("The movie was", " great", " awful")


def test_implicit_prompt_conversations():
    prompt = msgs(("system", "s"), ("user", "q"))
    (ex,), _ = to_examples([{"chosen": prompt + msgs(("assistant", "good")),
                             "rejected": prompt + msgs(("assistant", "bad"))}])
    assert ex.prompt == prompt and ex.chosen == msgs(("assistant", "good"))
    assert "no shared leading messages" in err([{"chosen": msgs(("user", "a"), ("assistant", "b")),
                                                 "rejected": msgs(("user", "c"), ("assistant", "d"))}])
    assert "field 'chosen': no 'prompt' field and no shared leading text" in err(
        [{"chosen": "Yes.", "rejected": "No."}])
    assert "both be message lists" in err([{"chosen": "Yes.", "rejected": msgs(("user", "No."))}], "preference")


def test_arrow_null_keys_in_messages_are_dropped():
    rows = [{"prompt": [{"role": "user", "content": "q", "name": None}], "completion": "a"}]
    (ex,), _ = to_examples(rows)
    assert ex.prompt == [{"role": "user", "content": "q"}]
    assert ex.completion == [{"role": "assistant", "content": "a"}]


def test_skip_invalid_rows_counts_and_logs(caplog):
    good = PLAIN["prompt_completion"][0]
    rows = [good, {"prompt": "p"}, good, {"prompt": 3, "completion": "c"}] + [{"x": 1}] * 6
    with caplog.at_level(logging.WARNING, logger="jaxalign.data"):
        examples, n = to_examples(rows, "auto", "data/x.jsonl", skip_invalid_rows=True)
    assert len(examples) == 2 and n == 8
    assert [e.row for e in examples] == [0, 2]
    text = caplog.text
    assert "skipped 8 invalid row(s) of 10" in text and "row 1 (0-based): field 'completion': missing" in text
    assert "(and 3 more)" in text
    _, reasons = F.check_rows(rows, "auto", "data/x.jsonl", skip_invalid_rows=True)
    assert len(reasons) == 8 and all("\n" not in r for r in reasons)


def test_every_row_invalid_is_an_error():
    assert "every row is invalid" in err([{"prompt": "p", "completion": ""}] * 3, skip_invalid_rows=True)


def test_detection_skips_unreadable_first_row_when_skipping():
    rows = [F.Unreadable("not valid JSON (x)"), PLAIN["prompt_only"][0]]
    examples, n = to_examples(rows, "auto", "f.jsonl", skip_invalid_rows=True)
    assert n == 1 and examples[0].row == 1
    assert err(rows) == "data/x.jsonl: row 0 (0-based): not valid JSON (x); cannot detect the format from it"


def test_jsonl_bad_lines_name_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", "completion": "b\xff"}\n'
                     b'{"prompt": "a", "compl\n')
    rows = load_dataset_rows(path, cache_dir=str(tmp_path / "c"))
    with pytest.raises(JaxalignError) as e:
        to_examples(rows, "auto", str(path))
    assert str(e.value) == f"{path}: row 1 (0-based): field 'completion': not valid UTF-8 text"
    examples, n = to_examples(rows, "auto", str(path), skip_invalid_rows=True)
    assert n == 2 and len(examples) == 1
    _, reasons = F.check_rows(rows, "auto", str(path), skip_invalid_rows=True)
    assert reasons[1].startswith(f"{path}: row 2 (0-based): not valid JSON")


def test_broken_json_file_is_a_file_level_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",,}\n]\n')
    with pytest.raises(JaxalignError, match=r"d.json: not valid JSON \("):
        load_dataset_rows(path, cache_dir=str(tmp_path / "c"))
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')  # JSON Lines under a .json name
    examples, _ = to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
    assert [e.prompt for e in examples] == ["a", "b"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_margins_load_from_files(tmp_path, kind):
    rows = [dict(PLAIN["preference"][0], margin=1.5), dict(PLAIN["preference"][1], margin=-2)]
    path = write_rows(rows, tmp_path / f"m.{kind}", kind)
    examples, _ = to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
    assert [e.margin for e in examples] == [1.5, -2.0]
