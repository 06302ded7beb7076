"""The whole pipeline through the CLI on configs/ape_tiny.yaml (the CI variant of `make demo-ape`,
a tiny random model on a tiny slice of one task): its files, its table and the invariants of its
record. Whether the pipeline selects a better instruction is tested where the better one is known:
tests/ape/test_search.py (a planted scorer); a random model's held-out scores are noise."""

import json

import numpy as np

from jaxalign.cli import main


def test_tiny_pipeline_writes_a_consistent_record(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["ape", "--config", "configs/ape_tiny.yaml", "--run-dir", str(run_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    out = json.loads((run_dir / "ape_results.json").read_text())
    assert (run_dir / "ape_results.md").read_text().count("| antonyms |") == 3
    (rec,) = out["tasks"]
    rows = {r["row"]: r for r in rec["table"]}
    assert rows["ape"]["instruction"] == rec["best"] and rows["none"]["instruction"] is None
    assert rec["heldout_rows"] == 3 and rec["train_rows"] == 6
    assert rec["best"] in printed
    # The filter's first stage saw every proposal; each later stage only the survivors.
    first, second = rec["rounds"]
    assert first["stages"][0]["candidates"] == list(range(len(first["candidates"])))
    for a, b in zip(first["stages"], first["stages"][1:]):
        assert b["candidates"] == a["kept"]
    # Resampling keeps the best so far in the pool, so the selected train score never drops.
    assert second["candidates"][0] == first["best"]
    finals = lambda r: {f["instruction"]: f["train_score"] for f in r["finalists"]}  # noqa: E731
    assert rec["best_train_score"] == max(finals(second).values()) >= max(finals(first).values())
    assert np.isclose(finals(second)[rec["best"]], rec["best_train_score"])


def test_a_bad_key_is_one_line_and_exit_2(capsys):
    assert main(["ape", "--config", "configs/ape_tiny.yaml", "ape.stage_sizes=[0]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key 'ape.stage_sizes'")


def test_help_lists_the_keys(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["ape", "--help"])
    assert "ape.keep_quantile: 0.5" in capsys.readouterr().out
