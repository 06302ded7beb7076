"""benchmarks/alignment_table.py: its helpers against hand computations, the budget's stopping
rule on a fake clock, every row's config, the table's rows and numbers, and (slow) a quick
end-to-end run whose gold rewards are recomputed with VADER directly."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import alignment_stages as st  # noqa: E402
import alignment_table as at  # noqa: E402


def test_trim_to_sentence_cuts_after_the_last_sentence_end():
    assert st.trim_to_sentence(" I loved it. The cast was great! And then the") == " I loved it. The cast was great!"
    assert st.trim_to_sentence(' He said it was "wow." Then') == ' He said it was "wow."'
    assert st.trim_to_sentence(" no sentence end here at all") is None
    assert st.trim_to_sentence(" Too short. and more words") is None  # 2 words before the cut
    assert st.trim_to_sentence(" version 2.5 of the film is long") is None  # a decimal point is no sentence end


def test_distinct_n_by_hand():
    # bigrams: (a b) (b a) (a b) | (a b) -> 4 bigrams, 2 distinct
    assert st.distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert st.distinct_n(["one"], 2) == 0.0


def _group(prompt, comps):
    n = len(comps)
    return st.Group(prompt, comps, np.zeros((n, 3), np.int32), np.ones((n, 3), np.int32), np.full(n, 3))


def test_pairs_from_orders_by_score_and_drops_ties_and_empties():
    groups = [_group("p1", [" good", " bad", " same", " same2"]), _group("p2", [" x", " "])]
    scores = [np.array([0.1, 0.9, 0.5, 0.5]), np.array([0.3, 0.2])]
    rows, stats = st.pairs_from(groups, scores, allow_ties=False)
    assert rows == [{"prompt": "p1", "chosen": " bad", "rejected": " good", "score_chosen": 0.9,
                     "score_rejected": pytest.approx(0.1)}]
    assert (stats["pairs"], stats["ties_dropped"], stats["empty_or_identical"]) == (1, 1, 1)
    assert stats["index"] == [(0, 1, 0)]
    rows, stats = st.pairs_from(groups, scores, allow_ties=True)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" bad", " good"), (" same", " same2")]


def test_best_demos_threshold_and_trimming():
    groups = [_group("p1", [" Meh film. It was", " Great fun. Loved it. But"]),
              _group("p2", [" awful", " dull"]), _group("p3", [" no end", " fine"])]
    scores = [np.array([0.2, 0.8]), np.array([-0.5, -0.1]), np.array([0.9, 0.1])]
    demos = st.best_demos(groups, scores, min_score=0.0, need_sentence=True)
    assert demos == [{"prompt": "p1", "completion": " Great fun. Loved it.", "score": pytest.approx(0.8)}]
    demos = st.best_demos(groups, scores, min_score=None, need_sentence=False)
    assert [d["completion"] for d in demos] == [" Great fun. Loved it.", " dull", " no end"]


class _FakeClock:
    def __init__(self):
        self.c = self.w = 0.0

    def cpu(self):
        return self.c

    def wall(self):
        return self.w


def _drive(budget, steps):
    """Step durations (cpu, wall); returns the 1-based step at which SIGTERM was sent (or None)."""
    clock, sent = _FakeClock(), []
    budget.t = clock
    hook = budget.wrap(None)
    for i, (dc, dw) in enumerate(steps, start=1):
        hook(None, {})
        if budget.ended_by is not None:
            sent.append(i)
            break
        clock.c += dc
        clock.w += dw
    return sent[0] if sent else None


def test_budget_makes_the_step_that_would_pass_the_limit_the_last(monkeypatch):
    monkeypatch.setattr(signal, "raise_signal", lambda s: None)
    # CPU budget 100: first step (compile) 40, then 15 each -> before step k, used = 40 + 15 (k - 2);
    # typical step 15 (the compile step left out). Before step 4: 70 + 2*15 = 100, not past the
    # limit; before step 5: 85 + 30 > 100, so step 5 is the last one, ending at exactly 100.
    b = st.Budget(100.0, "cpu")
    assert _drive(b, [(40, 1)] + [(15, 1)] * 20) == 5 and b.ended_by == "cpu"
    # A compile step alone never stops the run before a second step is measured...
    b = st.Budget(100.0, "cpu")
    assert _drive(b, [(90, 1)] + [(5, 1)] * 20) == 3
    # ...unless it already used the budget.
    b = st.Budget(100.0, "cpu")
    assert _drive(b, [(120, 1)] + [(5, 1)] * 20) == 2
    # The wall cap binds first when the process gets little CPU.
    b = st.Budget(100.0, "cpu", wall_cap_s=50.0)
    assert _drive(b, [(4, 10)] * 20) == 5 and b.ended_by == "wall cap"
    # Wall clock: same rule on wall seconds.
    b = st.Budget(30.0, "wall")
    assert _drive(b, [(1, 10)] * 20) == 3 and b.ended_by == "wall"
    # No limit: never stops.
    assert _drive(st.Budget(None), [(1, 1)] * 5) is None


def test_budget_signal_goes_through_the_loop_handler():
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        b = st.Budget(1.0, "cpu")
        b.t = _FakeClock()
        hook = b.wrap(lambda state, batch: (batch, {"m": 1}))
        assert hook(None, {"x": 1}) == ({"x": 1}, {"m": 1})
        b.t.c = 5.0
        hook(None, {})
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [signal.SIGTERM]


@pytest.mark.parametrize("row", list(st.ALGORITHMS))
@pytest.mark.parametrize("quick", [True, False])
def test_every_row_config_validates(row, quick, tmp_path):
    sizes = st.sizes_for(quick)
    raw = st.algorithm_config(row, sizes, tmp_path, steps=10**6, seed=0, quick=quick)
    cfg = st.load(raw, tmp_path / "c.yaml")
    assert cfg.algorithm == st.ALGORITHMS[row]
    assert cfg.model.path == str(tmp_path / "sft" / "final")  # every row starts from the SFT policy
    if row.startswith("ppo"):
        assert cfg.algo.preset == ("ppo_max" if row == "ppo-max" else "vanilla")
        assert cfg.algo.critic_source() == (str(tmp_path / "rm" / "final") if row == "ppo-max" else None)
    if hasattr(cfg.algo, "reward"):  # online rows see only the reward model
        assert (cfg.algo.reward.kind, cfg.algo.reward.path) == ("model", str(tmp_path / "rm" / "final"))


def _row(gold, steps=3):
    return {"steps": steps, "gold_reward": gold, "proxy_reward": gold + 1, "kl_per_token": 0.25,
            "response_length": 31.5, "perplexity": 12.3456, "distinct_2": 0.8751, "budget_cpu_s": 90.0,
            "budget_wall_s": 120.0, "ended_by": "cpu", "curves": {"kl_ref": [0.1, 0.4, None]}}


def test_markdown_has_every_row_and_its_numbers():
    rows = {"base": _row(0.01), "sft": _row(0.02)} | {r: _row(0.1 * i) for i, r in enumerate(st.ALGORITHMS)}
    rows["grpo"] = {"error": "boom"}
    table = at.markdown({"rows": rows, "model": "m"})
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + len(st.ALGORITHMS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    for name in rows:
        assert any(line.startswith(f"| {at.LABELS[name]} |") for line in lines)
    raft = next(line for line in lines if line.startswith("| RAFT |"))
    i = list(st.ALGORITHMS).index("raft")
    assert f"| {0.1 * i:+.3f} | {0.1 * i + 1:+.3f} | 0.250 | 31.5 | 12.35 | 0.88 | 1.5 | 2.0 | cpu |" in raft
    assert "failed: boom" in table
    rows["raft"]["gold_rewards"] = [0.0, 1.0, 0.5, 0.5]  # s.e. = sqrt(1/6 / 4) = 0.204
    assert f"| {0.1 * i:+.3f} ± 0.204 |" in at.markdown({"rows": rows, "model": "m"})
    comps = at.comparisons(rows)
    assert len(comps) == 2 and "largest training KL (per sequence) 0.400 vs 0.400" in comps[1]


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    """Prep + one online and one offline row on the tiny model; numbers recomputed where they can be."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    out = tmp_path / "t.json"
    assert at.main(["--quick", "--in-process", "--algorithms", "raft,dpo", "--work-dir", str(tmp_path / "w"),
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["rows"]) == ["base", "sft", "raft", "dpo"]
    vader = SentimentIntensityAnalyzer()
    for name, r in res["rows"].items():
        for k in ("gold_reward", "proxy_reward", "kl_per_token", "response_length", "perplexity", "distinct_2"):
            assert math.isfinite(r[k]), (name, k)
        assert r["gold_reward"] == pytest.approx(np.mean([vader.polarity_scores(c)["compound"]
                                                          for c in r["completions"]]), abs=1e-6)
        assert r["proxy_reward"] == pytest.approx(np.mean(r["proxy_rewards"]), abs=1e-6)
        assert r["perplexity"] >= 1.0
    assert res["rows"]["sft"]["kl_per_token"] == 0.0
    assert res["rows"]["raft"]["steps"] == res["rows"]["dpo"]["steps"] == 2
    table = out.with_suffix(".md").read_text()
    assert "| RAFT | 2 |" in table and "| DPO (offline, RM-labelled pairs) | 2 |" in table
