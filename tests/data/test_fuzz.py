"""Fuzzed data: rows of any shape, chat messages of any structure, JSONL files of any bytes.

Where tests/data/test_malformed.py plants one known defect and checks the exact message, these
properties throw arbitrary JSON at the whole data path (validation *and* tokenisation with the
shipped tiny tokenizer's chat template) and check only the contract: every outcome is either
examples, a one-line :class:`JaxalignError` naming the source, or (``skip_invalid_rows``) a
counted skip. Any other exception is a bug. Derandomised, so CI sees the same cases every run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings, strategies as st

from jaxalign.data import prepare_dataset
from jaxalign.data.formats import FORMATS, ROLES, check_rows
from jaxalign.data.loading import load_dataset_rows
from jaxalign.data.tokenize import tokenize_examples
from jaxalign.errors import JaxalignError
from tests.fuzz_helpers import FUZZ, cli_error_line, one_error_line, tree_digest
from tests import procenv
from tests.procenv import subprocess_env

FIELDS = ["text", "messages", "prompt", "completion", "chosen", "rejected", "responses", "ranking", "margin",
          "label"]
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                        st.text(max_size=6), st.sampled_from(["", " ", "\t\n", "\udce9x", "a" * 3000]))
words = st.text(alphabet="abc XYZ!?\n<|>", min_size=1, max_size=8).filter(str.strip)
TOOL_CALL = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
def msg(role):
    return st.fixed_dictionaries({"role": st.just(role), "content": words})


# Every way of being almost valid: a key missing, a value of another type, extra keys.
odd_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "tool_calls": st.just([TOOL_CALL])}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.one_of(words, st.none()),
                           "tool_calls": st.one_of(json_scalar, st.lists(json_scalar, max_size=2))}),
    st.fixed_dictionaries({}, optional={"role": st.one_of(st.sampled_from(ROLES), json_scalar),
                                        "content": st.one_of(words, json_scalar), "name": json_scalar}),
    json_scalar,
)


@st.composite
def conversation(draw, kind):
    """A well-formed conversation for a field of ``kind`` (prompt | completion | text), in which
    perhaps one message is replaced by an odd one."""
    if kind == "prompt":
        msgs = [draw(msg("system"))] if draw(st.booleans()) else []
        msgs += [draw(msg("user"))]
    elif kind == "completion":
        msgs = [draw(msg("assistant"))]
    else:
        msgs = [draw(msg("user")), draw(msg("assistant"))]
    if draw(st.integers(0, 3)) == 2:
        msgs[draw(st.integers(0, len(msgs) - 1))] = draw(odd_message)
    return msgs


@st.composite
def text_value(draw, kind):
    """Text or a conversation, or (about one time in ten) any JSON value."""
    if draw(st.integers(0, 9)) == 7:
        return draw(json_scalar)
    kinds = ["text", "prompt", "completion"] if kind == "any" else [kind]
    return draw(st.one_of(words, *[conversation(k) for k in kinds]))


REQUIRED = {"lm": ["text"], "prompt_completion": ["prompt", "completion"], "prompt_only": ["prompt"],
            "preference": ["prompt", "chosen", "rejected"], "ranked": ["prompt", "responses", "ranking"],
            "unpaired": ["prompt", "completion", "label"]}
KIND = {"text": "text", "prompt": "prompt", "completion": "completion", "chosen": "completion",
        "rejected": "completion"}


@st.composite
def row(draw, fmt=None):
    """A row of ``fmt`` (or any format): its fields filled with text or conversations (mostly well
    formed), then perhaps a field dropped, replaced by any JSON value, or an extra field added."""
    if draw(st.integers(0, 14)) == 7:
        return draw(st.one_of(json_scalar, st.lists(json_scalar, max_size=2)))
    fmt = fmt or draw(st.sampled_from(sorted(REQUIRED)))
    out = {}
    for f in REQUIRED[fmt]:
        if f == "responses":
            out[f] = draw(st.lists(text_value("completion"), min_size=draw(st.sampled_from([0, 2, 2, 2])),
                                   max_size=3))
        elif f == "label":
            out[f] = draw(st.one_of(st.booleans(), st.booleans(), json_scalar))
        elif f == "ranking":
            n = len(out.get("responses", []))
            out[f] = draw(st.one_of(st.permutations(list(range(n))), st.lists(json_scalar, max_size=3)))
        else:
            out[f] = draw(text_value(KIND[f]))
    if fmt == "preference" and draw(st.booleans()):
        out["margin"] = draw(st.one_of(st.floats(allow_nan=True), json_scalar))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        f = draw(st.sampled_from(FIELDS + ["x"]))
        if draw(st.sampled_from(["drop", "replace", "replace"])) == "drop":
            out.pop(f, None)
        else:
            out[f] = draw(st.one_of(text_value("any"), st.lists(text_value("any"), max_size=3)))
    return out


@st.composite
def dataset(draw):
    """(rows, fmt): rows mostly of one format, and the format named as auto, that one, or any."""
    fmt = draw(st.sampled_from(sorted(REQUIRED)))
    rows = draw(st.lists(st.one_of(row(fmt), row(fmt), row(fmt), row()), min_size=1, max_size=4))
    return rows, draw(st.one_of(st.sampled_from(["auto", fmt]), st.sampled_from(["auto", fmt]),
                                st.sampled_from(FORMATS)))


def assert_one_line(e: JaxalignError, source: str) -> str:
    return one_error_line(e, source)


@pytest.fixture(scope="module")
def quiet_data_log():
    logger = logging.getLogger("jaxalign.data")
    old = logger.level
    logger.setLevel(logging.ERROR)  # thousands of skip warnings otherwise
    yield
    logger.setLevel(old)


@settings(FUZZ, max_examples=400)
@given(case=dataset(), skip=st.booleans())
def test_any_rows_are_examples_a_one_line_error_or_counted_skips(tok, quiet_data_log, case, skip):
    """Validation then tokenisation (the chat template runs on every message list that passes)."""
    rows, fmt = case
    src = "fuzz.jsonl"
    try:
        examples, reasons = check_rows(rows, fmt, src, skip_invalid_rows=skip)
        unrenderable: list = []
        tokenized, dropped = tokenize_examples(examples, tok, max_length=64, max_prompt_length=32, source=src,
                                               skipped=unrenderable if skip else None)
    except JaxalignError as e:
        assert_one_line(e, src)
        event("error" if "chat template" not in str(e) else "error from the chat template")
        return
    event("tokenized" if not unrenderable else "a row the chat template cannot render, skipped")
    assert skip or not reasons
    assert len(examples) + len(reasons) <= len(rows)  # the rest: identical preference pairs, dropped
    assert len(tokenized) + len(unrenderable) + dropped == len(examples)
    for r in reasons + unrenderable:
        assert "\n" not in r and r.startswith(f"{src}: row "), r
    for t in tokenized:
        for k, v in t.items():
            if k.endswith(("_ids", "_mask")) and not isinstance(v, list):
                assert v.dtype.name == "int32" and v.ndim == 1 and len(v) <= 64, (k, v)


def test_a_conversation_the_chat_template_cannot_render_is_a_row_error_or_a_counted_skip(tok, tmp_path):
    """A found bug: an assistant message with tool_calls and no content passes validation, and
    the ChatML template (``message['content']``) raised jinja2's UndefinedError with a traceback."""
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, good, bad, good]))
    with pytest.raises(JaxalignError) as e:
        prepare_dataset(path, tok, max_length=64, max_prompt_length=32)
    msg = assert_one_line(e.value, str(path))
    assert msg.startswith(f"{path}: row 2 (0-based): the chat template cannot render this conversation (")
    tokenized, stats = prepare_dataset(path, tok, max_length=64, max_prompt_length=32, skip_invalid_rows=True)
    assert [t["row"] for t in tokenized] == [0, 1, 3] and stats.skipped == 1
    assert stats.skip_reasons[0].startswith(f"{path}: row 2 (0-based): the chat template")


def _line(draw) -> bytes:
    kind = draw(st.sampled_from(["row", "row", "json", "bytes", "deep", "huge"]))
    if kind == "row":
        return json.dumps(draw(row())).encode("utf-8", "surrogateescape")
    if kind == "json":  # a valid row with bytes that are not UTF-8 inside a string
        text = json.dumps({"prompt": "caf\u2603", "completion": " ok"}).encode()
        return text.replace("\u2603".encode(), draw(st.sampled_from([b"\xe9", b"\xff\xfe", b"\xc3"])))
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == "deep":
        n = draw(st.sampled_from([50, 5000, 100_000]))
        return b'{"prompt": ' + b"[" * n + b"]" * n + b"}"
    return json.dumps({"prompt": "p" * draw(st.sampled_from([10_000, 1_000_000])), "completion": " c"}).encode()


@settings(FUZZ, max_examples=60)
@given(data=st.data(), suffix=st.sampled_from([".jsonl", ".json"]), skip=st.booleans())
def test_any_bytes_in_a_jsonl_file_load_or_fail_in_one_line(quiet_data_log, data, suffix, skip):
    lines = data.draw(st.lists(st.builds(lambda: None), min_size=1, max_size=5))
    content = b"\n".join(_line(data.draw) for _ in lines) + data.draw(st.sampled_from([b"", b"\n", b"\n\n"]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(content)
        try:
            rows = load_dataset_rows(path, cache_dir=str(Path(d) / "cache"))
            examples, reasons = check_rows(rows, "auto", str(path), skip_invalid_rows=skip)
        except JaxalignError as e:
            assert_one_line(e, str(path))
            return
        assert len(examples) + len(reasons) <= len(rows)


def test_json_files_that_crash_pyarrow_are_read_line_by_line(tmp_path):
    """Found bugs: pyarrow's JSON reader (under ``datasets``) segfaults on a JSON Lines file whose
    first row (or the first row of a read block) is ``null``, and on nesting ~10,000 levels deep.
    Run in a child process, so that a regression fails this test instead of killing the session."""
    import sys

    files = {"null_first.jsonl": b'null\n{"prompt": "p", "completion": " c"}\n',
             "blank_then_null.jsonl": b'\n  null\n{"prompt": "p", "completion": " c"}\n',
             "deep.jsonl": b'{"prompt": "p", "completion": " c"}\n{"prompt": ' + b"[" * 100_000
                           + b"]" * 100_000 + b', "completion": " c"}\n',
             "deep.json": b'{"rows": [{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    script = f"""
import sys
from jaxalign.data.formats import to_examples
from jaxalign.data.loading import load_dataset_rows
from jaxalign.errors import JaxalignError
for name in {sorted(files)!r}:
    path = {str(tmp_path)!r} + "/" + name
    try:
        examples, skipped = to_examples(load_dataset_rows(path, cache_dir={str(tmp_path / "cache")!r}), "auto",
                                        path, skip_invalid_rows=True)
        print(name, "examples", len(examples), "skipped", skipped)
    except JaxalignError as e:
        print(name, "error", str(e))
"""
    out = procenv.run([sys.executable, "-c", script], timeout=300,
                         cwd=Path(__file__).resolve().parents[2], env=subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["null_first.jsonl"] == "examples 1 skipped 1", lines
    assert lines["blank_then_null.jsonl"] == "examples 1 skipped 1", lines
    assert lines["deep.jsonl"] == "examples 1 skipped 1", lines
    assert lines["deep.json"].startswith("error ") and "not valid JSON" in lines["deep.json"], lines


GOOD_SFT = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(12)]


@st.composite
def invalid_row(draw):
    """A row that fails validation on its own (a prompt_completion row, fuzzed)."""
    r = draw(row("prompt_completion"))
    try:
        check_rows([r], "prompt_completion", "x.jsonl")
    except JaxalignError:
        return r
    return dict(r, completion=draw(st.sampled_from(["", " ", None, 3, [], {}])))


@settings(FUZZ, max_examples=5)
@given(bad=invalid_row(), at=st.integers(0, 12))
def test_cli_bad_rows_are_one_error_line_with_exit_2_and_the_run_dir_untouched(capsys, quiet_data_log, bad, at):
    from jaxalign.cli import main

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = d / "train.jsonl"
        rows = GOOD_SFT[:at] + [bad] + GOOD_SFT[at:]
        data.write_bytes(b"".join(json.dumps(r).encode("utf-8", "surrogateescape") + b"\n" for r in rows))
        run = d / "run"
        run.mkdir()
        (run / "notes.txt").write_text("mine")
        before = tree_digest(run)
        capsys.readouterr()
        rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run), "--quiet",
                   f"data.train={data}", "train.steps=1"])
        assert cli_error_line(capsys, rc).startswith(f"error: {data}: row {at} (0-based)")
        assert tree_digest(run) == before
