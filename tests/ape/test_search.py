"""APE's selection logic end to end (:func:`jaxalign.ape.run.search_task`: propose -> adaptive
filter -> resample -> held-out table) on a planted scorer: the proposals and variations are
fixed texts, and the per-row scores are constructed so that one known-good instruction beats
every other candidate on *every* row. A correct pipeline must then select it, whatever the
seed and the filter's subsets; a real bug (a wrong direction, a filter that drops the best, a
resampling round that loses it) fails the test, and noise cannot."""

import zlib

import jax
import numpy as np
import pytest

from jaxalign.ape.config import ApeConfig
from jaxalign.ape.run import search_task
from jaxalign.ape.tasks import Task

GOOD = "Write the opposite of the input word."
# What the "model" proposes: the good instruction behind a list marker, junk, a duplicate.
PROPOSALS = ["- write the opposite of the input word", "banana banana", "1) repeat the input",
             "zzz", "banana banana", "say a number"]
VARIATIONS = ["Repeat the word twice.", "Write the opposite of the input word.", "Say nothing."]
ROWS = [(f"w{i}", f"o{i}") for i in range(20)]


class PlantedScorer:
    """The :class:`jaxalign.ape.score.Scorer` interface with constructed preferences: per row,
    GOOD scores ``-1 + u``, any other instruction ``-3 + u'`` and no instruction ``-4 + u''``
    (``u`` in [0, 1) from the row and the text): GOOD is best on every row, by a margin."""

    def __init__(self):
        self.scored = []

    def chat_ids(self, user, prefix=""):
        return (user, prefix)

    def sample(self, prompts, *, max_new_tokens, key=None, temperature=1.0, greedy=False):
        variation = "Generate a variation" in prompts[0][0]
        pool = VARIATIONS if variation else PROPOSALS
        return [pool[i % len(pool)] for i in range(len(prompts))]

    @staticmethod
    def _u(instruction, x):
        return (zlib.crc32(f"{instruction}|{x}".encode()) % 1000) / 1000.0

    def logprobs_many(self, items):
        self.scored.extend(items)
        base = {GOOD: -1.0, None: -4.0}
        return np.asarray([base.get(s, -3.0) + self._u(s, x) for s, x, _ in items])

    def exact_match_many(self, items):
        return np.asarray([float(s == GOOD and self._u(s, x) < 0.9) for s, x, _ in items])


@pytest.mark.parametrize("metric", ["logprob", "exact_match"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_planted_good_instruction_is_selected(metric, seed):
    ape = ApeConfig(tasks=["planted"], train_size=12, num_candidates=6, num_demos=2, stage_sizes=[3, 3],
                    metric=metric, resample_rounds=1, resample_top=2, resample_variations=1)
    scorer = PlantedScorer()
    task = Task("planted", ROWS, human="Say the antonym.")
    rec = search_task(scorer, task, ape, jax.random.key(seed), np.random.default_rng(seed))
    assert rec["best"] == GOOD
    first, second = rec["rounds"]
    # Five distinct proposals after clean-up (the duplicate dropped, the list markers stripped).
    assert first["candidates"] == [GOOD, "Banana banana.", "Repeat the input.", "Zzz.", "Say a number."]
    # Every stage kept GOOD (index 0), and only candidates that were alive.
    for a, b in zip(first["stages"], first["stages"][1:]):
        assert b["candidates"] == a["kept"]
    assert all(0 in st["kept"] for st in first["stages"])
    # Resampling starts from the best two and never re-proposes a seen instruction.
    assert second["candidates"][0] == GOOD and GOOD not in second["candidates"][2:]
    assert second["best"] == GOOD
    # Only training rows were scored during the search; the table then uses the held-out rows.
    train_inputs = {x for x, _ in ROWS[:12]}
    held = {x for x, _ in ROWS[12:]}
    rows = {r["row"]: r for r in rec["table"]}
    assert rows["ape"]["instruction"] == GOOD and rows["human"]["instruction"] == "Say the antonym."
    assert rows["ape"]["logprob"] > rows["human"]["logprob"] > rows["none"]["logprob"]
    want = np.mean([-1.0 + PlantedScorer._u(GOOD, x) for x, _ in ROWS[12:]])
    assert rows["ape"]["logprob"] == pytest.approx(want)
    searched = scorer.scored[:len(scorer.scored) - 3 * len(held)]
    assert {x for _, x, _ in searched} <= train_inputs
