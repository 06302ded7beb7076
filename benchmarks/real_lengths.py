"""Realistic-lengths training throughput (``throughput.py --lengths real``): jaxalign packed vs
jaxalign padded vs TRL vs the eager PyTorch loop, on the same long-tailed examples.

    .venv/bin/python benchmarks/throughput.py --lengths real [--only sft,dpo] [--examples 16]
        [--pairs 12] [--rows 4] [--max-length 512] [--seed 0] [--out benchmarks/results/throughput_real.json]

**Lengths.** Chat/preference data is long-tailed: a few long prompts and answers, many short
ones. Prompt and response lengths (tokens) are drawn from log-normals, ``round(exp(N(log median,
sigma)))``, at least 4 tokens: prompts median 100, sigma 1.0 (mean ~165); responses median 200,
sigma 0.8 (mean ~275); a pair's chosen and rejected responses independently. These parameters
are **chosen, not fitted**: no dataset can be downloaded here. They are a rough match to the
published size of UltraFeedback-binarized (``HuggingFaceH4/ultrafeedback_binarized`` dataset
card: 405.7 MB for 61,135 ``train_prefs`` rows, ~6.6 kB a row; a row stores the prompt four
times, the chosen response twice and the rejected once, so at ~4 characters a token
4 p + 2 c + r ~ 1,660 tokens, against 4·165 + 3·275 ~ 1,485 here). Prompts are cut to
``max_length // 2`` and responses to the rest of ``max_length`` (as ``data.max_prompt_length``
and ``data.max_length`` do). Token ids are uniform random (ids do not change the work), drawn
from ``default_rng([seed, i])`` per example ``i``, so example ``i`` is the same whatever ``n``.

**Same examples on every side.** Every side trains on all ``n`` examples (SFT) or pairs (DPO),
in their index order, each exactly once in the timed pass; each child returns the real
(non-pad) tokens it fed, counted from its own batch masks, and a digest of the examples' token
ids, and the harness refuses a run where they differ.

**Same batch token budget.** A step is ``--rows`` rows of ``max_length`` tokens (DPO:
``2 · max_length``, a pair's two sequences): jaxalign packed fills each row first-fit with
several examples (:mod:`jaxalign.data.packing`, rows padded to a pow2 bucket of the longest row
as ``PackedBatchIterator`` does); the padded sides take ``--rows`` examples (pairs) a step,
padded to the longest of the step (jaxalign: rounded up to its default pow2 bucket; the PyTorch
loop and TRL: exactly), so their largest step has the packed step's shape. TRL's SFT runs with
``padding_free=True`` (see :func:`real_sides.run_trl_sft` for what that does on a CPU); TRL 1.16's
DPO ignores ``padding_free`` (it warns and pads), so its DPO runs padded to the step's longest.

**Timing.** Each side runs in its own process (peak RSS per side, model loading included).
Before the timed pass, jaxalign runs one step per distinct batch shape (compiles; a long run
meets the same few shapes again and again) and the torch sides one step on the first batch.
Real tokens/s = real tokens of the pass / the sum of its step times.
"""

from __future__ import annotations

import hashlib

import numpy as np

VOCAB = 49152
PROMPT_LOGNORMAL = (100.0, 1.0)  # (median tokens, sigma of the log)
RESPONSE_LOGNORMAL = (200.0, 0.8)
MIN_TOKENS = 4


def sample_lengths(rng: np.random.Generator, size: int, median: float, sigma: float) -> np.ndarray:
    """``size`` log-normal token counts: ``round(exp(N(log median, sigma)))``, at least 4."""
    return np.maximum(np.rint(np.exp(rng.normal(np.log(median), sigma, size))), MIN_TOKENS).astype(np.int64)


def example_lengths(kind: str, i: int, max_length: int, seed: int = 0) -> tuple[int, ...]:
    """Example ``i``'s (prompt, response) lengths (``kind="sft"``) or (prompt, chosen response,
    rejected response) lengths (``"dpo"``), cut to ``max_length // 2`` and the rest."""
    rng = np.random.default_rng([seed, i])
    p = int(min(sample_lengths(rng, 1, *PROMPT_LOGNORMAL)[0], max_length // 2))
    rs = sample_lengths(rng, 1 if kind == "sft" else 2, *RESPONSE_LOGNORMAL)
    return (p, *(int(min(r, max_length - p)) for r in rs))


def make_examples(kind: str, n: int, max_length: int, seed: int = 0) -> list[dict]:
    """``n`` tokenized examples in jaxalign's format: SFT ``input_ids``, ``completion_mask``;
    DPO ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask`` (a shared prompt)."""
    out = []
    for i in range(n):
        lens = example_lengths(kind, i, max_length, seed)
        rng = np.random.default_rng([seed, i, 1])
        p = lens[0]
        prompt = rng.integers(4, VOCAB, p).tolist()
        seqs = [(prompt + rng.integers(4, VOCAB, r).tolist(), [0] * p + [1] * r) for r in lens[1:]]
        if kind == "sft":
            out.append({"input_ids": seqs[0][0], "completion_mask": seqs[0][1]})
        else:
            out.append({"chosen_ids": seqs[0][0], "chosen_mask": seqs[0][1],
                        "rejected_ids": seqs[1][0], "rejected_mask": seqs[1][1]})
    return out


def sequences(example: dict) -> list[list[int]]:
    """The token sequences of an example: one (SFT) or two (chosen, rejected)."""
    return [example["input_ids"]] if "input_ids" in example else [example["chosen_ids"], example["rejected_ids"]]


def real_tokens(examples) -> int:
    """Tokens of the examples' sequences (no padding)."""
    return sum(len(s) for e in examples for s in sequences(e))


def digest(examples) -> str:
    """A short sha256 of the multiset of the examples' token ids: the same whatever order a side
    fed them in (packing reorders examples first-fit), different when any token differs or an
    example is missing or repeated."""
    def one(e):
        h = hashlib.sha256()
        for s in sequences(e):
            h.update(np.asarray(s, np.int64).tobytes() + b"|")
        return h.digest()

    h = hashlib.sha256()
    for d in sorted(one(e) for e in examples):
        h.update(d)
    return h.hexdigest()[:16]


def plan_steps(examples: list[dict], rows: int, max_length: int, packed: bool) -> list[list]:
    """The steps of one pass over ``examples`` in order: packed, a list of ``rows`` packed rows
    (each a list of example indices, first-fit into ``max_length`` tokens, ``2 · max_length`` for
    pairs); padded, a list of ``rows`` example indices. The last step may be smaller."""
    if not packed:
        return [list(range(i, min(i + rows, len(examples)))) for i in range(0, len(examples), rows)]
    from jaxalign.data.packing import pack, unit_length

    capacity = max_length * (1 if "input_ids" in examples[0] else 2)
    packed_rows = pack([unit_length(e) for e in examples], capacity)
    return [packed_rows[i:i + rows] for i in range(0, len(packed_rows), rows)]


def step_examples(step: list, packed: bool) -> list[int]:
    """The example indices of one planned step."""
    return [i for row in step for i in row] if packed else list(step)
