"""APE's adaptive multi-stage filter (Zhou et al. 2022, arXiv:2211.01910, Section 3.2):
evaluate every candidate on a small subset of the training rows, keep those whose score is above
a threshold, evaluate the survivors on a fresh, non-overlapping subset (scores accumulate as a
running mean), and evaluate the last survivors on the whole training set. Pure NumPy: the
scores come from a callback, so the filter is tested against a plain score matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


def stage_keep(scores: np.ndarray, keep_quantile: float) -> np.ndarray:
    """Boolean mask of the candidates kept after a stage: ``score >= quantile(scores, q)``
    (``np.quantile``, linear interpolation). The best candidate is always kept; ties at the
    threshold are all kept."""
    scores = np.asarray(scores, np.float64)
    return scores >= np.quantile(scores, keep_quantile)


@dataclasses.dataclass
class FilterResult:
    """What the filter did.

    Attributes:
      stages: per stage, ``{"rows", "candidates", "scores", "threshold", "kept"}`` (candidate
        indices and their running mean scores before the cut).
      finalists: indices of the candidates evaluated on every training row.
      final_scores: their mean scores over every training row (same order).
      best: the index of the best finalist (the first one on a tie).
    """

    stages: list
    finalists: list
    final_scores: list
    best: int


def adaptive_filter(num_candidates: int, num_rows: int, score_fn: Callable[[Sequence[int], Sequence[int]], np.ndarray],
                    stage_sizes: Sequence[int], keep_quantile: float, rng: np.random.Generator) -> FilterResult:
    """Run the filter over ``num_candidates`` candidates and ``num_rows`` training rows.

    Args:
      score_fn: ``score_fn(candidates, rows) -> [len(candidates), len(rows)]`` per-row scores
        (higher is better).
      stage_sizes: rows per stage; stage ``k`` uses the next ``stage_sizes[k]`` rows of one
        permutation of the rows (``rng``), so no row is scored twice before the final evaluation.
        The stages stop early once one candidate is left.
      keep_quantile: the threshold of :func:`stage_keep`.

    Returns:
      a :class:`FilterResult`.
    """
    if num_candidates < 1:
        raise ValueError("adaptive_filter: no candidates")
    order = rng.permutation(num_rows)
    alive = np.arange(num_candidates)
    sums = np.zeros(num_candidates)
    counts = np.zeros(num_candidates)
    start, stages = 0, []
    for size in stage_sizes:
        rows = order[start:start + size]
        start += size
        if len(alive) <= 1 or len(rows) == 0:
            break
        s = np.asarray(score_fn(alive.tolist(), rows.tolist()), np.float64)
        sums[alive] += s.sum(axis=1)
        counts[alive] += len(rows)
        mean = sums[alive] / counts[alive]
        keep = stage_keep(mean, keep_quantile)
        stages.append({"rows": rows.tolist(), "candidates": alive.tolist(), "scores": mean.tolist(),
                       "threshold": float(np.quantile(mean, keep_quantile)), "kept": alive[keep].tolist()})
        alive = alive[keep]
    final = np.asarray(score_fn(alive.tolist(), list(range(num_rows))), np.float64).mean(axis=1)
    return FilterResult(stages, alive.tolist(), final.tolist(), int(alive[int(np.argmax(final))]))
