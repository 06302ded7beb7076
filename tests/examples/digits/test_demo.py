"""The digits demo end to end on tiny settings (what ``make demo-digits`` runs, in seconds): the
report's numbers are consistent with its per-seed values, and the table and PNG grid are written.
Whether RAFT raises a reward is tested where the effect is planted (test_pipeline.py); a tiny
model's before/after difference is noise."""

import json

import numpy as np
import pytest

from jaxalign.examples.digits import demo


def test_tiny_demo_writes_a_consistent_report(tmp_path, capsys):
    assert demo.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == [name for name, *_ in demo.ROWS]
    s = report["settings"]
    for r in report["rows"]:
        for f, per in (("mean", "per_seed"), ("realistic", "realistic_per_seed")):
            a = np.asarray(r[per])
            assert len(a) == s["eval_seeds"] and 0.0 <= a.min() and a.max() <= 1.0
            assert r[f] == pytest.approx(a.mean())
        assert r["se"] == pytest.approx(np.std(r["per_seed"], ddof=1) / np.sqrt(s["eval_seeds"]))
        assert r["realistic_se"] == pytest.approx(np.std(r["realistic_per_seed"], ddof=1) / np.sqrt(s["eval_seeds"]))
        assert np.mean(r["per_digit"]) == pytest.approx(r["mean"], rel=1e-5)
    assert len(report["raft"]) == s["iterations"]
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| unguided, after RAFT |" in md and f"{report['rows'][0]['realistic_se']:.2f} |" in md
    assert "reward classifier" in capsys.readouterr().out


@pytest.mark.parametrize("args,err", [
    (["--prompts", "15"], "error: prompts must be a multiple of 10, got 15"),
    (["--iterations", "0"], "error: config key 'iterations': must be >= 1, got 0"),
    (["--alpha", "1.5"], "error: config key 'alpha': must be > 0.0 and <= 1.0, got 1.5"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, err):
    assert demo.main(["--tiny", *args, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == err
