"""jaxalign.data.loading: a JSON Lines file cut off inside its last row is one error line naming
the file and the row, with nothing from pyarrow or ``datasets`` on stderr."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from jaxalign.data.loading import load_examples
from jaxalign.errors import JaxalignError
from tests import procenv
from tests.fuzz_helpers import one_error_line

ROWS = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(5)]
EXPECTED = "row 5 (0-based): not valid JSON; the file ends inside this row (truncated?) ("


def _truncated(tmp_path):
    path = tmp_path / "train.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in ROWS) + json.dumps(ROWS[0])
    path.write_text(text[:-9])  # '{"prompt": "Question 0?", "complet'
    return path


def test_a_truncated_last_row_is_one_error_naming_file_and_row(tmp_path, caplog):
    path = _truncated(tmp_path)
    with caplog.at_level(logging.WARNING), pytest.raises(JaxalignError) as e:
        load_examples(path, "prompt_completion", cache_dir=str(tmp_path / "cache"))
    assert one_error_line(e.value).startswith(f"{path}: {EXPECTED}"), str(e.value)
    # datasets logged pyarrow's parse error ("Failed to load JSON from file ...") at ERROR first.
    noise = [r for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.WARNING]
    assert not noise, [r.getMessage() for r in noise]


def test_a_bad_line_before_the_end_is_not_called_truncated(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n" + json.dumps(ROWS[1]))  # last row complete, no newline
    with pytest.raises(JaxalignError) as e:
        load_examples(path, "prompt_completion", cache_dir=str(tmp_path / "cache"))
    msg = one_error_line(e.value, f"{path}: row 1 (0-based): not valid JSON (")
    assert "truncated" not in msg


@pytest.mark.slow
def test_cli_prints_exactly_one_line_for_a_truncated_file(tmp_path):
    path = _truncated(tmp_path)
    proc = procenv.run([sys.executable, "-m", "jaxalign.cli", "sft", "--config", "configs/sft_tiny.yaml",
                        "--run-dir", str(tmp_path / "run"), "--quiet", f"data.train={path}"],
                       timeout=300, cwd=procenv.ROOT,
                       env=procenv.subprocess_env(HF_DATASETS_CACHE=str(tmp_path / "cache")))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: {EXPECTED}"), lines[0]
    assert not (tmp_path / "run").exists()
