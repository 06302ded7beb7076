"""The digits demo end to end on tiny settings (what ``make demo-digits`` runs, in seconds): the
unguided model's prompt-alignment reward on held-out seeds ends above where it started, and the
report, its table and the PNG grid are written."""

import json

from jaxalign.examples.digits import demo


def test_tiny_demo_beats_its_baseline(tmp_path, capsys):
    assert demo.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    before, guided, after = (rows[n] for n in ("unguided, before RAFT", "guided (magic prompt), before RAFT",
                                               "unguided, after RAFT"))
    assert guided["mean"] > before["mean"]  # the magic prompt helps before alignment
    assert after["mean"] > before["mean"] + 2 * max(before["se"], after["se"]), (before, after)
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| unguided, after RAFT |" in (tmp_path / "report.md").read_text()
    assert "reward classifier" in capsys.readouterr().out


def test_bad_prompts_is_a_one_line_error(tmp_path, capsys):
    assert demo.main(["--tiny", "--prompts", "15", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: prompts must be a multiple of 10, got 15"
