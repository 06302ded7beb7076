"""Property tests: every malformed row is a one-line error naming the row and field, or a counted skip."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxalign.data.formats import ROLES, to_examples
from jaxalign.data.loading import load_dataset_rows
from jaxalign.data.tokenize import tokenize_examples
from jaxalign.errors import JaxalignError

BASE = {
    "lm": {"text": "hello there"},
    "prompt_completion": {"prompt": "Q: hi?\nA:", "completion": " yes."},
    "prompt_only": {"prompt": "Tell me."},
    "preference": {"prompt": "How?", "chosen": "Yes indeed.", "rejected": "No way."},
    "ranked": {"prompt": "Rate.", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
}
TEXT_FIELDS = {"lm": ["text"], "prompt_completion": ["prompt", "completion"], "prompt_only": ["prompt"],
               "preference": ["prompt", "chosen", "rejected"], "ranked": ["prompt"]}
MARK = "\u2603MARK\u2603"  # replaced by bytes that are not UTF-8 when written to a file

wrong_values = st.one_of(
    st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just([]), st.lists(st.integers(), min_size=1, max_size=3),
)
bad_roles = st.text(max_size=8).filter(lambda r: r not in ROLES)


def expected_field(fmt: str, field: str, row: dict) -> str:
    # A preference row without a prompt (missing or null) falls back to the implicit prompt,
    # which "Yes indeed." / "No way." do not share: the error is then about 'chosen'.
    if (fmt, field) == ("preference", "prompt") and row.get("prompt") is None:
        return "chosen"
    return field


@st.composite
def malformed(draw, in_file: bool = False):
    """(fmt, row, field): a row of ``fmt`` with one defect, and the field the error must name."""
    fmt = draw(st.sampled_from(sorted(BASE)))
    row = json.loads(json.dumps(BASE[fmt]))
    field = draw(st.sampled_from(TEXT_FIELDS[fmt] + (["responses", "ranking"] if fmt == "ranked" else [])))
    kinds = ["missing", "wrong_type"]
    if field not in ("responses", "ranking"):
        kinds += ["empty", "bad_role", "bad_content", "not_utf8"]
    if field == "ranking":
        kinds += ["ranking_nan", "ranking_perm"]
    if field == "responses":
        kinds += ["response_empty"]
    kind = draw(st.sampled_from(kinds))
    if kind == "missing":
        del row[field]
    elif kind == "wrong_type":
        v = draw(wrong_values)
        if field == "ranking" and isinstance(v, list) and v:
            v = v + [0.5]  # a list of ints could happen to be a permutation
        if field == "responses" and isinstance(v, list) and v:
            v = [v]
        row[field] = v
    elif kind == "empty":
        row[field] = draw(st.text(alphabet=" \t\n\r", max_size=4))
    elif kind == "bad_role":
        row[field] = [{"role": draw(bad_roles), "content": "hi"}]
    elif kind == "bad_content":
        role = "assistant" if field in ("completion", "chosen", "rejected") else "user"
        row[field] = [{"role": role, "content": draw(st.one_of(st.integers(), st.lists(st.integers())))}]
        if field in ("completion", "chosen", "rejected"):  # message completions need message prompts
            row["prompt"] = [{"role": "user", "content": "q"}]
    elif kind == "not_utf8":
        row[field] = "caf" + (MARK if in_file else "\udce9") + draw(st.text(max_size=5))
    elif kind == "ranking_nan":
        row["ranking"] = [2, float("nan"), 1]
    elif kind == "ranking_perm":
        row["ranking"] = draw(st.lists(st.integers(-2, 4), max_size=5).filter(lambda r: sorted(r) != [0, 1, 2]))
    elif kind == "response_empty":
        j = draw(st.integers(0, 2))
        row["responses"][j] = ""
        field = f"responses[{j}]"
    return fmt, row, expected_field(fmt, field, row)


def check(fmt, rows, pos, field, source):
    with pytest.raises(JaxalignError) as e:
        to_examples(rows, fmt, source)
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith(f"{source}: row {pos} (0-based): field '{field}': "), msg
    if len(rows) == 1:
        with pytest.raises(JaxalignError, match="every row is invalid; first: .*row 0 "):
            to_examples(rows, fmt, source, skip_invalid_rows=True)
        return
    examples, n_skipped = to_examples(rows, fmt, source, skip_invalid_rows=True)
    assert n_skipped == 1 and len(examples) == len(rows) - 1
    assert pos not in [ex.row for ex in examples]


@given(malformed(), st.integers(0, 4), st.integers(0, 4))
@settings(max_examples=300, deadline=None)
def test_malformed_rows_in_memory(case, before, after):
    fmt, bad, field = case
    rows = [BASE[fmt]] * before + [bad] + [BASE[fmt]] * after
    check(fmt, rows, before, field, "data/x.jsonl")


@given(malformed(in_file=True), st.integers(0, 3), st.integers(0, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_malformed_rows_in_jsonl_files(case, before, after):
    fmt, bad, field = case
    lines = [json.dumps(r).encode() for r in [BASE[fmt]] * before + [bad] + [BASE[fmt]] * after]
    lines = [ln.replace(json.dumps(MARK)[1:-1].encode(), b"\xe9\xff") for ln in lines]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        rows = load_dataset_rows(path, cache_dir=str(Path(d) / "cache"))
        check(fmt, rows, before, field, str(path))


@given(st.sampled_from(["prompt", "completion"]), st.integers(50_000, 200_000),
       st.sampled_from(["truncate_left", "drop", "error"]))
@settings(max_examples=12, deadline=None)
def test_huge_strings_are_bounded_or_named(tok, field, size, policy):
    row = {"prompt": "p", "completion": " c"}
    row[field] = ("x" if field == "prompt" else " x") * size
    examples, _ = to_examples([{"prompt": "q", "completion": " a"}, row], "prompt_completion", "big.jsonl")
    if field == "prompt" and policy == "error":
        with pytest.raises(JaxalignError, match=r"^big.jsonl: row 1 \(0-based\): field 'prompt': \d+ tokens"):
            tokenize_examples(examples, tok, max_length=64, max_prompt_length=32, prompt_overflow=policy,
                              source="big.jsonl")
        return
    out, dropped = tokenize_examples(examples, tok, max_length=64, max_prompt_length=32, prompt_overflow=policy)
    assert dropped == (1 if (field == "prompt" and policy == "drop") else 0)
    assert all(len(t["input_ids"]) <= 64 and t["completion_mask"].sum() >= 1 for t in out)


def test_nan_stays_visible_through_a_file(tmp_path):
    """JSON's NaN token is not standard; it must still reach the check rather than become null."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(BASE["ranked"]) + "\n" + json.dumps(dict(BASE["ranked"], ranking=[0, math.nan, 1])) + "\n")
    with pytest.raises(JaxalignError, match=r"row 1 \(0-based\): field 'ranking': item 1: .*nan"):
        to_examples(load_dataset_rows(path, cache_dir=str(tmp_path / "c")), "auto", str(path))
