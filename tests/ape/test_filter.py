"""The adaptive filter keeps exactly the candidates at or above each stage's quantile threshold,
on fresh rows each stage, and picks the best on the full evaluation (vs plain NumPy loops)."""

import numpy as np
import pytest

from jaxalign.ape.filter import adaptive_filter, stage_keep


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_stage_keep_is_the_quantile_cut(q):
    scores = np.random.default_rng(1).normal(size=11)
    s = sorted(scores)
    # Linear-interpolation quantile by hand (numpy's default), then the cut.
    pos = q * (len(s) - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    threshold = s[lo] + (s[hi] - s[lo]) * (pos - lo)
    assert stage_keep(scores, q).tolist() == [x >= threshold for x in scores]
    assert stage_keep(scores, q)[np.argmax(scores)]


def test_ties_at_the_threshold_are_all_kept():
    assert stage_keep(np.array([1.0, 2.0, 2.0, 2.0, 0.0]), 0.5).tolist() == [False, True, True, True, False]


def test_adaptive_filter_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    C, N, sizes, q = 9, 30, [4, 6, 5], 0.5
    M = rng.normal(size=(C, N)) + rng.normal(size=(C, 1))  # candidate quality + row noise
    calls = []

    def score_fn(cands, rows):
        calls.append((list(cands), list(rows)))
        return M[np.asarray(cands)][:, np.asarray(rows)]

    res = adaptive_filter(C, N, score_fn, sizes, q, np.random.default_rng(7))

    order = np.random.default_rng(7).permutation(N)
    alive, seen, start = list(range(C)), [], 0
    for k, size in enumerate(sizes):
        if len(alive) <= 1:
            break
        rows = order[start:start + size].tolist()
        start += size
        seen += rows
        means = {c: np.mean([M[c, r] for r in seen]) for c in alive}
        cut = np.quantile(list(means.values()), q)
        expect = [c for c in alive if means[c] >= cut]
        assert res.stages[k]["rows"] == rows and res.stages[k]["candidates"] == alive
        assert res.stages[k]["kept"] == expect
        np.testing.assert_allclose(res.stages[k]["scores"], [means[c] for c in alive])
        alive = expect
    assert res.finalists == alive
    full = [M[c].mean() for c in alive]
    np.testing.assert_allclose(res.final_scores, full)
    assert res.best == alive[int(np.argmax(full))]
    # Each stage scored only the survivors, on rows never scored before; then every row.
    stage_rows = [r for _, rows in calls[:-1] for r in rows]
    assert len(stage_rows) == len(set(stage_rows))
    assert calls[-1] == (alive, list(range(N)))


def test_a_single_candidate_goes_straight_to_the_final_evaluation():
    M = np.arange(10.0)[None]
    res = adaptive_filter(1, 10, lambda c, r: M[np.asarray(c)][:, np.asarray(r)], [3, 3], 0.5,
                          np.random.default_rng(0))
    assert res.stages == [] and res.finalists == [0] and res.final_scores == [4.5] and res.best == 0
