"""Sample completions of the online algorithms (``samples.jsonl`` and the trackers' tables): the
held-out evaluation keeps the first sample of each of its first ``train.log_samples`` prompts
with its reward; a run logs them at every eval, step 0 included; without held-out prompts, the
samples of the step's own experience."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxalign.algorithms import online
from jaxalign.config import load_config
from jaxalign.rewards.functions import keyword_reward
from tests.algorithms.conftest import SMALLEST_MODEL, run_cli
from tests.algorithms.test_online import _maker, tok  # noqa: F401  (tok: a fixture)


def _setup(tok, completions, prompts):
    ev = [{"prompt_ids": np.asarray(tok(t, add_special_tokens=False)["input_ids"], np.int32)} for t in prompts]
    return online.Setup(None, None, None, tok, None, _maker(tok, completions), None, ev, 0)


@pytest.mark.parametrize("n, want", [
    (4, [("p", "ab", 0.5), ("q", "b", 0.0), ("r", "ab", 0.5)]),  # 3 held-out prompts (2 batches): 3 samples
    (1, [("p", "ab", 0.5)]),
    (0, []),
])
def test_evaluation_keeps_the_first_sample_of_each_prompt(tok, n, want):
    cfg = load_config("configs/grpo_tiny.yaml", ["train.batch_size=2", f"train.log_samples={n}"], algorithm="grpo")
    # 2 samples per prompt: rows "ab", "aa" are prompt p's, "b", "ba" prompt q's.
    evaluate = online.make_evaluate(cfg, _setup(tok, ["ab", "aa", "b", "ba"], ["p", "q", "r"]))
    assert evaluate.samples == []
    evaluate(None)
    assert [(s["prompt"], s["completion"], s["reward"]) for s in evaluate.samples] == want


def _samples(run_dir):
    return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]


TINY_RUN = ["train.steps=2", "train.batch_size=2", "grpo.num_generations=2", "grpo.sampling.max_new_tokens=6",
            "train.log_every=1", "train.save_final=false", "train.plots=false", "train.report_to=none",
            *SMALLEST_MODEL]


def test_a_run_logs_samples_at_every_eval_with_their_rewards(tmp_path):
    run = tmp_path / "run"
    assert run_cli("grpo", run, *TINY_RUN, "train.eval_every=2", "train.eval_at_start=true",
                   "train.log_samples=3") == 0
    rows = _samples(run)
    assert [r["step"] for r in rows] == [0, 0, 0, 2, 2, 2]  # before training, at the eval, not twice at the end
    assert all(set(r) == {"step", "prompt", "completion", "reward"} and r["prompt"] for r in rows)
    # The reward is the planted one of the completion shown (the fraction of "a").
    for r in rows:
        assert r["reward"] == pytest.approx(float(keyword_reward([r["completion"]], "a", True)[0]), abs=1e-6)


def test_without_held_out_prompts_the_samples_come_from_the_step(tmp_path):
    run = tmp_path / "run"
    assert run_cli("grpo", run, *TINY_RUN, "data.eval_fraction=0", "train.eval_every=1") == 0
    rows = _samples(run)
    assert [r["step"] for r in rows] == [1, 1, 2, 2]  # log_samples=4, but 2 prompts per step
    for r in rows:
        assert r["reward"] == pytest.approx(float(keyword_reward([r["completion"]], "a", True)[0]), abs=1e-6)
