"""Data sources: ``:split`` and ``data.subset`` of dataset directories and Hub datasets (from a
fake Hub cache, offline), ``data.columns`` before format detection, weighted lists of sources,
and the one-line errors for an unknown split, subset or column."""

from __future__ import annotations

import re
import time

import pytest

from jaxalign.data.loading import load_dataset_rows, load_examples
from jaxalign.data.sources import Source, parse_sources, split_of, weighted
from jaxalign.errors import JaxalignError
from tests.data.conftest import write_rows
from tests.fuzz_helpers import one_error_line
from tests.io.hub_fixtures import add_repo, hub_cache  # noqa: F401  (fixture)

QA_TRAIN = [{"question": f"q{i}?", "response": f"a{i}.", "id": i} for i in range(4)]
QA_TEST = [{"question": "t0?", "response": "b0.", "id": 10}, {"question": "t1?", "response": "b1.", "id": 11}]
LM_TRAIN = [{"text": "hello world"}, {"text": "good night"}, {"text": "hi there"}]
README = """---
configs:
- config_name: qa
  default: true
  data_files:
  - split: train
    path: qa/train-*.parquet
  - split: test
    path: qa/test-*.parquet
- config_name: lm
  data_files:
  - split: train
    path: lm/train-*.parquet
---
# A two-subset dataset
"""
QA_COLUMNS = {"question": "prompt", "response": "completion", "id": None}


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    """A dataset directory as on the Hub: README ``configs:`` with subsets qa (train, test) and lm."""
    d = tmp_path_factory.mktemp("qa_dataset")
    for sub, split, rows in (("qa", "train", QA_TRAIN), ("qa", "test", QA_TEST), ("lm", "train", LM_TRAIN)):
        (d / sub).mkdir(exist_ok=True)
        write_rows(rows, d / sub / f"{split}-00000-of-00001.parquet", "parquet")
    (d / "README.md").write_text(README)
    return d


def rows_of(ds) -> list[dict]:
    return [dict(r) for r in ds]


def test_split_of():
    assert split_of("HuggingFaceH4/ultrafeedback_binarized:train_prefs") == (
        "HuggingFaceH4/ultrafeedback_binarized", "train_prefs")
    assert split_of("org/name@v1.0:test") == ("org/name@v1.0", "test")
    assert split_of("data/dir:validation") == ("data/dir", "validation")
    assert split_of("shipped:sft_tiny.jsonl") == ("shipped:sft_tiny.jsonl", None)
    assert split_of("train.jsonl") == ("train.jsonl", None)


def test_an_existing_path_with_a_colon_has_no_split(tmp_path):
    p = write_rows(LM_TRAIN, tmp_path / "a:b.jsonl", "jsonl")
    assert split_of(str(p)) == (str(p), None)


def test_a_directory_split_and_subset(ds_dir):
    assert rows_of(load_dataset_rows(ds_dir)) == QA_TRAIN  # the default subset, split train
    assert rows_of(load_dataset_rows(ds_dir, "test")) == QA_TEST
    assert rows_of(load_dataset_rows(ds_dir, "train", subset="lm")) == LM_TRAIN


def test_an_unknown_split_lists_the_available_ones(ds_dir):
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows(ds_dir, "validation")
    one_error_line(e.value, f"{ds_dir}: no split 'validation' (available splits: train, test); "
                            f"name one as {ds_dir}:SPLIT")


def test_an_unknown_subset_lists_the_available_ones(ds_dir):
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows(ds_dir, "train", subset="chat")
    one_error_line(e.value, f"config key 'data.subset': {ds_dir} has no subset 'chat' (available subsets: qa, lm)")


def test_save_to_disk_splits(tmp_path):
    import datasets

    d = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA_TRAIN),
                          "test": datasets.Dataset.from_list(QA_TEST)}).save_to_disk(str(d))
    assert rows_of(load_dataset_rows(d, "test")) == QA_TEST
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows(d, "dev")
    one_error_line(e.value, f"{d}: no split 'dev' (available splits: train, test)")
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows(d, "train", subset="qa")
    one_error_line(e.value, "config key 'data.subset':")


def test_a_single_file_has_only_the_train_split(tmp_path):
    p = write_rows(LM_TRAIN, tmp_path / "lm.jsonl", "jsonl")
    assert len(load_dataset_rows(p, "train")) == 3
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows(p, "test")
    one_error_line(e.value, f"{p}: a single data file has no split 'test'")


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_columns_map_onto_fields_before_format_detection(tmp_path, kind):
    p = write_rows(QA_TRAIN, tmp_path / f"qa.{kind}", kind)
    with pytest.raises(JaxalignError, match="cannot tell the data format"):
        load_examples(p)
    examples, _ = load_examples(p, columns=QA_COLUMNS)
    assert [(e.prompt, e.completion) for e in examples] == [(r["question"], r["response"]) for r in QA_TRAIN]


def test_a_column_swap_and_a_drop(tmp_path):
    rows = [{"prompt": "P", "completion": "C", "junk": 1}]
    p = write_rows(rows, tmp_path / "x.jsonl", "jsonl")
    examples, _ = load_examples(p, columns={"prompt": "completion", "completion": "prompt", "junk": None})
    assert (examples[0].prompt, examples[0].completion) == ("C", "P")


def test_an_unknown_column_names_it_and_the_columns_the_data_have(ds_dir, tmp_path):
    with pytest.raises(JaxalignError) as e:
        load_examples(ds_dir, columns={"questoin": "prompt"})
    one_error_line(e.value, f"config key 'data.columns': {ds_dir} has no column 'questoin' "
                            "(its columns: question, response, id)")
    p = write_rows(QA_TRAIN, tmp_path / "qa.jsonl", "jsonl")
    with pytest.raises(JaxalignError) as e:
        load_examples(p, columns={"answer": "completion"})
    one_error_line(e.value, f"config key 'data.columns': {p} has no column 'answer' (its columns: question, response, id)")


def test_a_rename_onto_a_column_that_stays_is_refused(tmp_path):
    p = write_rows([{"prompt": "P", "question": "Q", "completion": "C"}], tmp_path / "x.jsonl", "jsonl")
    with pytest.raises(JaxalignError) as e:
        load_examples(p, columns={"question": "prompt"})
    one_error_line(e.value, f"config key 'data.columns.question': {p} already has a column 'prompt'; drop or rename "
                            "it too (e.g. prompt: null)")


def test_parse_sources():
    got = parse_sources([{"path": "a.jsonl", "weight": 2}, "org/ds:test",
                         {"path": "d", "subset": "lm", "columns": {"x": "text"}}],
                        "data.train", subset="qa", columns={"q": "prompt"})
    assert got == [
        Source("a.jsonl", None, "qa", {"q": "prompt"}, 2.0, "data.train[0]", "data.columns"),
        Source("org/ds", "test", "qa", {"q": "prompt"}, 1.0, "data.train[1]", "data.columns"),
        Source("d", None, "lm", {"x": "text"}, 1.0, "data.train[2]", "data.train[2].columns", True),
    ]
    assert parse_sources("b.jsonl", "data.eval") == [Source("b.jsonl", key="data.eval")]


@pytest.mark.parametrize("value, expected", [
    ([], "config key 'data.train': an empty list; give at least one source"),
    ([{"path": "a", "weight": 0}], "config key 'data.train[0].weight': must be a finite number > 0, got 0"),
    ([{"path": "a", "weight": float("nan")}], "config key 'data.train[0].weight': must be a finite number > 0"),
    (["a", {"path": "b", "weight": True}], "config key 'data.train[1].weight': expected a number > 0, got True"),
    ([{"path": "a", "wieght": 2}], "unknown config key 'data.train[0].wieght'; did you mean 'data.train[0].weight'?"),
    ([{"weight": 2}], "config key 'data.train[0].path': expected a file, directory or Hub dataset name"),
    ([3], "config key 'data.train[0]': expected a path or a mapping"),
    ([{"path": "a", "columns": {"x": 3}}], "config key 'data.train[0].columns.x': expected a field name"),
    ([{"path": "a", "columns": {"x": "prompt", "y": "prompt"}}],
     "config key 'data.train[0].columns': both 'x' and 'y' map onto 'prompt'"),
])
def test_bad_sources_are_one_line_naming_the_key(value, expected):
    with pytest.raises(JaxalignError) as e:
        parse_sources(value, "data.train")
    one_error_line(e.value, expected)


def test_weights_repeat_rows_deterministically():
    a, b = list(range(10)), list(range(100, 104))
    assert weighted([a], [1.0]) == a
    assert weighted([a, b], [2, 1]) == a + a + b
    half = weighted([a, b], [0.5, 1], seed=3)
    assert len(half) == 5 + 4 and set(half[:5]) < set(a) and half[:5] == sorted(half[:5])
    assert weighted([a, b], [0.5, 1], seed=3) == half  # same seed, same rows
    assert any(weighted([a, b], [0.5, 1], seed=s)[:5] != half[:5] for s in range(4, 10))
    mixed = weighted([a, b], [1.5, 2.5], seed=0)
    assert len(mixed) == 15 + 10 and mixed[:10] == a and mixed[15:23] == b + b


# --- Hub datasets, from the fake cache ---------------------------------------------------------


def test_a_hub_dataset_split_and_subset_from_the_cache(hub_cache, ds_dir):
    add_repo(hub_cache, "tiny-org/qa", ds_dir, repo_type="dataset", refs=("main", "v1"))
    assert rows_of(load_dataset_rows("tiny-org/qa")) == QA_TRAIN
    assert rows_of(load_dataset_rows("tiny-org/qa@v1", "test")) == QA_TEST
    assert rows_of(load_dataset_rows("tiny-org/qa", "train", subset="lm")) == LM_TRAIN
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows("tiny-org/qa", "train_prefs")
    one_error_line(e.value, "tiny-org/qa: no split 'train_prefs' (available splits: train, test)")


def test_a_hub_dataset_not_in_the_cache_is_one_line_at_once(hub_cache):
    t = time.monotonic()
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")
    assert time.monotonic() - t < 5
    msg = one_error_line(e.value, "HuggingFaceH4/ultrafeedback_binarized: no such file or directory, and Hugging Face "
                                  "Hub dataset 'HuggingFaceH4/ultrafeedback_binarized' could not be fetched (offline")
    assert "hf download HuggingFaceH4/ultrafeedback_binarized --repo-type dataset" in msg


def test_a_bare_name_is_not_looked_up(tmp_path):
    with pytest.raises(JaxalignError) as e:
        load_dataset_rows("imdb")
    one_error_line(e.value, "imdb: no such file or directory")


# --- the data section of a run: lists, weights, eval_fraction, fingerprint -------------------


def _cfg(tmp_path, *overrides):
    from jaxalign.config import load_config
    from tests import procenv

    cfg = load_config(procenv.ROOT / "configs" / "sft_tiny.yaml",
                      ["data.eval_fraction=0", "data.max_length=64", "data.max_prompt_length=32", *overrides])
    cfg.quiet = True
    return cfg


@pytest.fixture
def two_files(tmp_path):
    a = write_rows([{"prompt": f"a{i}", "completion": f"x{i}"} for i in range(6)], tmp_path / "a.jsonl", "jsonl")
    b = write_rows([{"question": f"b{i}", "response": f"y{i}"} for i in range(4)], tmp_path / "b.parquet", "parquet")
    return a, b


def _texts(tok, examples):
    return [tok.decode(e["input_ids"]) for e in examples]


def test_a_weighted_list_in_a_run_config(tmp_path, tok, two_files):
    from jaxalign.algorithms.data_setup import datasets_from
    from jaxalign.data import BatchIterator

    a, b = two_files
    listed = f"data.train=[{{path: {a}, weight: 2}}, {{path: {b}, columns: {{question: prompt, response: completion}}}}]"
    train, ev = datasets_from(_cfg(tmp_path, listed), tok, ("sft",))
    assert len(train) == 2 * 6 + 4 and ev == []
    texts = _texts(tok, train)
    assert texts[:6] == texts[6:12] and "b3" in texts[-1] and "y3" in texts[-1]
    once, _ = datasets_from(_cfg(tmp_path, listed.replace("weight: 2", "weight: 1")), tok, ("sft",))
    assert len(once) == 10

    def fp(examples):
        return BatchIterator(examples, 2, seed=0, pad_id=tok.pad_token_id).fingerprint()

    assert fp(train) != fp(once)  # the run identity sees the weights
    # eval_fraction holds out loaded rows before weighting: no copy of an eval row trains.
    train, ev = datasets_from(_cfg(tmp_path, listed, "data.eval_fraction=0.3"), tok, ("sft",))
    held = set(_texts(tok, ev))
    assert len(ev) == 3 and not held & set(_texts(tok, train))


def test_hub_dataset_with_split_and_columns_in_a_run_config(tmp_path, tok, hub_cache, ds_dir):
    from jaxalign.algorithms.data_setup import datasets_from

    add_repo(hub_cache, "tiny-org/qa", ds_dir, repo_type="dataset")
    cfg = _cfg(tmp_path, "data.train=tiny-org/qa:test", "data.columns={question: prompt, response: completion, id: null}")
    train, _ = datasets_from(cfg, tok, ("sft",))
    texts = _texts(tok, train)
    assert len(texts) == 2 and "t0?" in texts[0] and "b0." in texts[0] and "t1?" in texts[1]
    cfg = _cfg(tmp_path, "data.train=tiny-org/qa", "data.subset=lm")
    assert len(datasets_from(cfg, tok, ("sft",))[0]) == 3


def test_data_subset_skips_single_files_but_a_source_subset_does_not(tmp_path, tok, hub_cache, ds_dir):
    from jaxalign.algorithms.data_setup import datasets_from

    add_repo(hub_cache, "tiny-org/qa", ds_dir, repo_type="dataset")
    lm = write_rows(LM_TRAIN[:2], tmp_path / "lm.jsonl", "jsonl")
    cfg = _cfg(tmp_path, f"data.train=[tiny-org/qa, {lm}]", "data.subset=lm")
    assert len(datasets_from(cfg, tok, ("sft",))[0]) == 3 + 2
    with pytest.raises(JaxalignError) as e:
        datasets_from(_cfg(tmp_path, f"data.train=[{{path: {lm}, subset: lm}}]"), tok, ("sft",))
    one_error_line(e.value, f"{lm}: a single data file has no subset 'lm'")


def test_sources_of_two_kinds_are_refused(tmp_path, tok, two_files):
    from jaxalign.algorithms.data_setup import datasets_from

    a, _ = two_files
    pref = write_rows([{"prompt": "p", "chosen": "c", "rejected": "r"}], tmp_path / "pref.jsonl", "jsonl")
    with pytest.raises(JaxalignError) as e:
        datasets_from(_cfg(tmp_path, f"data.train=[{a}, {pref}]"), tok, ("sft",))
    one_error_line(e.value, f"config key 'data.train[1]': {pref} holds 'preference' data, but data.train[0] ({a}) "
                            "holds 'sft'")


def test_prompt_columns_stay_with_their_rows_in_a_mixture(tmp_path, tok):
    """Two prompt sources both have a row 0, and a weight repeats rows: the mixture's rows are
    renumbered, so the column lookup by row (the rewards' answers) stays one to one."""
    from jaxalign.algorithms.data_setup import datasets_from
    from jaxalign.data import columns_by_row

    a = write_rows([{"prompt": f"a{i}", "answer": i} for i in range(3)], tmp_path / "a.jsonl", "jsonl")
    b = write_rows([{"prompt": f"b{i}", "answer": 10 + i} for i in range(2)], tmp_path / "b.jsonl", "jsonl")
    cfg = _cfg(tmp_path, f"data.train=[{{path: {a}, weight: 2}}, {b}]", "data.eval_fraction=0.2")
    train, ev = datasets_from(cfg, tok, ("prompt",))
    for part in (train, ev):
        table = columns_by_row(part)
        for e in part:
            m = re.search(r"([ab])(\d)", tok.decode(e["prompt_ids"]))
            assert table[e["row"]]["answer"] == int(m[2]) + (10 if m[1] == "b" else 0), (m[0], table[e["row"]])
    held_from_a = re.search(r"([ab])\d", tok.decode(ev[0]["prompt_ids"]))[1] == "a"
    assert len(ev) == 1 and len(train) == (2 * 2 + 2 if held_from_a else 2 * 3 + 1)


def test_a_weight_that_keeps_no_rows_is_refused(tmp_path, tok, two_files):
    from jaxalign.algorithms.data_setup import datasets_from

    a, _ = two_files
    with pytest.raises(JaxalignError) as e:
        datasets_from(_cfg(tmp_path, f"data.train=[{{path: {a}, weight: 0.01}}]"), tok, ("sft",))
    one_error_line(e.value, f"config key 'data.train[0].weight': 0.01 of 6 examples ({a}) keeps none of them")


@pytest.mark.parametrize("override, expected", [
    ("data.train=[{path: a.jsonl, weight: -1}]", "config key 'data.train[0].weight': must be a finite number > 0, got -1"),
    ("data.columns={q: 3}", "config key 'data.columns.q': expected a field name"),
    ("data.columns=[q]", "config key 'data.columns': expected"),
    ("data.subset=''", "config key 'data.subset': an empty name"),
    ("data.eval=[]", "config key 'data.eval': an empty list"),
])
def test_config_checks_name_the_data_key(tmp_path, override, expected):
    with pytest.raises(JaxalignError) as e:
        _cfg(tmp_path, override)
    one_error_line(e.value, expected)
