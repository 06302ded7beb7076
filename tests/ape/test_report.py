import json

from jaxalign.ape.report import format_table, write_results

OUT = {"wall_s": 3.0, "tasks": [{"task": "t", "metric": "logprob", "best": "A | b.", "best_train_score": -1.5,
                                 "table": [{"row": "human", "instruction": "H.", "logprob": -2.0, "exact_match": 0.5},
                                           {"row": "ape", "instruction": "A | b.", "logprob": -1.25, "exact_match": 0.75},
                                           {"row": "none", "instruction": None, "logprob": -3.0, "exact_match": 0.0}]}]}


def test_table_rows_and_escaping():
    lines = format_table(OUT).splitlines()
    assert len(lines) == 5
    assert lines[3] == "| t | APE (best) | -1.250 | 0.75 | A \\| b. |"
    assert lines[4] == "| t | no instruction | -3.000 | 0.00 | (none) |"


def test_files_written(tmp_path):
    write_results(tmp_path / "r", OUT, {"seed": 0})
    assert json.loads((tmp_path / "r" / "ape_results.json").read_text()) == OUT
    assert "selected by logprob (train score -1.500): A | b." in (tmp_path / "r" / "ape_results.md").read_text()
    assert (tmp_path / "r" / "ape_config.yaml").read_text().strip() == "seed: 0"
