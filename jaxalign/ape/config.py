"""``jaxalign ape``'s config: the ``ape:`` section and the run around it (``seed``, ``model:``).

Like the training configs, each key's meaning is written once, in the class docstring's
attribute list (``--help`` prints it, ``tests/ape/test_config.py`` fails on a key without one).
This module imports no JAX.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxalign.config.checks import check_ranges, positive
from jaxalign.config.schema import ModelSpec
from jaxalign.errors import JaxalignError

METRICS = ("logprob", "exact_match")


@dataclasses.dataclass
class ApeConfig:
    """Automatic prompt engineering (Zhou et al. 2022, arXiv:2211.01910).

    tasks: instruction-induction tasks: shipped names (antonyms, plural, sentiment) or JSONL
      files of {"input", "output"} rows (a file may set a human instruction: ``path::instruction``).
    train_size: the first this many rows of a task are the demonstrations/scoring set; the rest is held out.
    heldout_size: evaluate on at most this many held-out rows; null: all of them.
    num_candidates: instructions proposed per task (forward mode, one demo subset each).
    num_demos: demonstrations shown in each proposal prompt.
    proposal_tokens: most tokens of a proposed instruction.
    proposal_temperature: sampling temperature of the proposals.
    metric: the score that selects: ``logprob`` (mean log-prob of the desired outputs) or
      ``exact_match`` (execution accuracy of greedy answers).
    stage_sizes: examples per adaptive-filter stage, each a fresh subset of the train rows.
    keep_quantile: after each stage, keep the candidates whose running mean score is at or
      above this quantile of the survivors' scores (0.5: the better half).
    resample_rounds: iterative Monte-Carlo rounds: variations of the best instructions, re-filtered.
    resample_top: the best this many instructions are varied in each round.
    resample_variations: variations asked for per varied instruction.
    answer_tokens: most tokens of a greedy answer (exact-match execution).
    batch_size: sequences per compiled forward or generate call.
    """

    tasks: list = dataclasses.field(default_factory=lambda: ["antonyms", "plural", "sentiment"])
    train_size: int = 50
    heldout_size: int | None = None
    num_candidates: int = 8
    num_demos: int = 5
    proposal_tokens: int = 24
    proposal_temperature: float = 0.9
    metric: str = "logprob"
    stage_sizes: list = dataclasses.field(default_factory=lambda: [5, 10])
    keep_quantile: float = 0.5
    resample_rounds: int = 0
    resample_top: int = 2
    resample_variations: int = 2
    answer_tokens: int = 8
    batch_size: int = 16

    def validate(self) -> None:
        """One-line errors naming the bad ``ape.*`` key."""
        def bad(key, msg):
            raise JaxalignError(f"config key 'ape.{key}': {msg}")

        if not isinstance(self.tasks, list) or not self.tasks or not all(isinstance(t, str) for t in self.tasks):
            bad("tasks", "expected a non-empty list of task names or JSONL files")
        check_ranges(self, {**positive("train_size", "num_candidates", "num_demos", "proposal_tokens", "resample_top",
                                       "resample_variations", "answer_tokens", "batch_size", "heldout_size"),
                            "resample_rounds": (0, None, True, True), "proposal_temperature": (0, None, False, True),
                            "keep_quantile": (0.0, 1.0, True, True)}, "ape.")
        if self.metric not in METRICS:
            bad("metric", f"expected one of {', '.join(METRICS)}, got {self.metric!r}")
        if not isinstance(self.stage_sizes, list) or not all(isinstance(s, int) and s >= 1 for s in self.stage_sizes):
            bad("stage_sizes", f"expected a list of positive integers, got {self.stage_sizes!r}")
        if sum(self.stage_sizes) > self.train_size:
            bad("stage_sizes", f"the stages use {sum(self.stage_sizes)} rows, more than ape.train_size={self.train_size}")
        if self.num_demos > self.train_size:
            bad("num_demos", f"{self.num_demos} is more than ape.train_size={self.train_size}")


@dataclasses.dataclass
class ApeRunConfig:
    """A ``jaxalign ape`` run.

    seed: the random seed of the proposals and of the filter's subsets.
    run_dir: output directory (``--run-dir``); default: runs/ape-<time>.
    quiet: no progress bar (``--quiet``).
    model: the proposer and scorer (the same model, as in the paper's SmolLM2 setting).
    ape: the APE section.
    """

    seed: int = 0
    run_dir: str | None = None
    quiet: bool = False
    model: ModelSpec = dataclasses.field(default_factory=lambda: ModelSpec(path="smollm2-135m-instruct"))
    ape: ApeConfig = dataclasses.field(default_factory=ApeConfig)


def load_ape_config(path, overrides=()) -> ApeRunConfig:
    """A YAML file plus dotted ``key=value`` overrides -> a validated :class:`ApeRunConfig`."""
    from jaxalign.config.coerce import from_dict, unknown_keys, unknown_keys_error
    from jaxalign.config.load import _parse_override, _read, _set

    raw = _read(Path(path)) if path is not None else {}
    for item in overrides:
        keys, value = _parse_override(item)
        _set(raw, keys, value, f"override {item!r}")
    problems = unknown_keys(ApeRunConfig, raw)
    if problems:
        raise unknown_keys_error(problems)
    cfg = from_dict(ApeRunConfig, raw)
    if cfg.seed < 0:
        raise JaxalignError(f"config key 'seed': must be >= 0, got {cfg.seed}")
    cfg.ape.validate()
    return cfg
