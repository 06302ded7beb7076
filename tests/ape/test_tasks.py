import json

import pytest

from jaxalign.ape.tasks import HUMAN, load_task, read_rows
from jaxalign.errors import JaxalignError


@pytest.mark.parametrize("name", sorted(HUMAN))
def test_shipped_tasks(name):
    task = load_task(name)
    assert len(task.rows) == 100 and task.human == HUMAN[name]
    assert len({x for x, _ in task.rows}) == 100  # no input twice: held-out rows are unseen
    train, held = task.split(50, 30)
    assert len(train) == 50 and len(held) == 30 and not set(train) & set(held)


def test_sentiment_labels_are_balanced():
    labels = [y for _, y in load_task("sentiment").rows]
    assert labels.count("positive") == labels.count("negative") == 50


def test_a_file_task_with_its_instruction(tmp_path):
    f = tmp_path / "caps.jsonl"
    f.write_text("\n".join(json.dumps({"input": w, "output": w.upper()}) for w in ["a", "b", "c"]))
    task = load_task(f"{f}::Upper-case it.")
    assert task.name == "caps" and task.human == "Upper-case it." and task.rows[1] == ("b", "B")


def test_bad_rows_name_file_line_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"input": "a", "output": "b"}\n{"input": "a"}\n')
    with pytest.raises(JaxalignError, match=r"bad.jsonl, line 2: field 'output'"):
        read_rows(f)
    f.write_text("{oops\n")
    with pytest.raises(JaxalignError, match="line 1: not valid JSON"):
        read_rows(f)
    with pytest.raises(JaxalignError, match="neither a shipped task"):
        load_task("antonym")
    with pytest.raises(JaxalignError, match="leaves no held-out rows"):
        load_task("plural").split(100)
