"""GRPO / RLOO: advantages against numpy, the loss on a hand-made batch, and a planted reward
that rises on held-out prompts through the CLI."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import grpo
from jaxalign.errors import JaxalignError
from tests.algorithms.conftest import SMALLEST_MODEL, metric_rows, run_cli, tiny_cfg


def test_grpo_advantages_match_numpy():
    scores = np.array([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0], np.float32)
    algo = grpo.Config(num_generations=4)
    adv = np.asarray(grpo.advantages(algo, {"scores": jnp.asarray(scores)}))
    g = scores.reshape(2, 4)
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(adv, want.reshape(-1), rtol=1e-5, atol=1e-6)
    assert np.all(adv[4:] == 0)  # a group with equal rewards has no signal


def test_rloo_advantages_with_kl_shaping_match_numpy():
    rng = np.random.default_rng(0)
    n, g, t = 2, 3, 5
    scores = rng.normal(size=n * g).astype(np.float32)
    old = rng.normal(size=(n * g, t)).astype(np.float32)
    ref = rng.normal(size=(n * g, t)).astype(np.float32)
    mask = (rng.random((n * g, t)) > 0.3).astype(np.int32)
    algo = grpo.Config(advantage="rloo", num_generations=g, beta=0.1)
    exp = {"scores": jnp.asarray(scores), "old_logps": jnp.asarray(old), "ref_logps": jnp.asarray(ref),
           "completion_mask": jnp.asarray(mask)}
    adv = np.asarray(grpo.advantages(algo, exp)).reshape(n, g)
    r = (scores - 0.1 * ((old - ref) * mask).sum(-1)).reshape(n, g)
    want = np.stack([[r[i, j] - np.delete(r[i], j).mean() for j in range(g)] for i in range(n)])
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("over, key", [
    (["grpo.num_generations=1"], "grpo.num_generations"),
    (["grpo.advantage=ppo"], "grpo.advantage"),
    (["grpo.sampling.temperature=0"], "grpo.sampling.temperature"),
    (["grpo.reward.kind=keyword", "grpo.reward.pattern=null"], "grpo.reward.pattern"),
    (["grpo.rewrd.kind=length"], "grpo.reward"),
])
def test_config_errors(over, key):
    with pytest.raises(JaxalignError, match=key.replace(".", r"\.")):
        tiny_cfg("grpo", *over)


def _eval_rewards(run_dir):
    rows = metric_rows(run_dir)
    return [r["eval/reward"] for r in rows if "eval/reward" in r], rows


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_planted_reward_rises_on_held_out_prompts(tmp_path, advantage):
    run = tmp_path / advantage
    over = ["train.steps=20", "train.eval_every=10", "train.eval_at_start=true", f"grpo.advantage={advantage}"]
    if advantage == "rloo":
        over.append("grpo.beta=0.01")  # with a reference model: KL-shaped rewards, kl_ref logged
    rc = run_cli("grpo", run, *over)
    assert rc == 0
    evals, rows = _eval_rewards(run)
    assert evals[0] < 0.2 and evals[-1] > 0.6, evals
    assert evals[-1] > evals[0] + 0.4
    train_rows = [r for r in rows if "reward/mean" in r]
    assert all(k in train_rows[-1] for k in ("time/generate", "time/score", "step_time", "clipfrac",
                                            "response_length", "reward/std"))
    if advantage == "rloo":
        assert all(np.isfinite(r["kl_ref"]) for r in train_rows)
    assert (run / "final" / "config.json").exists()


def test_math_reward_list_on_the_shipped_problems_through_the_cli(tmp_path):
    """The prompt rows' ``answer`` reaches ``kind: math`` in training and held out, and each
    component of the list is logged beside the weighted total."""
    from jaxalign.data import shipped_path

    held = tmp_path / "held.jsonl"  # 3 held-out problems keep the final evaluation short
    held.write_text("".join(shipped_path("arith_heldout.jsonl").read_text().splitlines(True)[:3]))
    run = tmp_path / "run"
    rc = run_cli("grpo", run, "data.train=shipped:arith_train.jsonl", f"data.eval={held}", "data.eval_fraction=0",
                 "grpo.reward=[{kind: math, name: correct, format_bonus: 0.5}, "
                 "{kind: length, target_length: 4, name: short, weight: 0.1}]",
                 "train.steps=2", "train.batch_size=2", "grpo.num_generations=2", "grpo.sampling.max_new_tokens=4",
                 "train.eval_every=0", "train.eval_at_start=true", "train.log_every=1", "train.save_final=false",
                 *SMALLEST_MODEL)
    assert rc == 0
    rows = metric_rows(run)
    train = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/reward" in r]
    assert len(train) == 2 and len(evals) == 2  # before and after
    for r in train:  # the mean of a weighted sum is the weighted sum of the means
        assert r["reward/mean"] == pytest.approx(r["reward/correct"] + 0.1 * r["reward/short"], abs=1e-5)
        assert -1 <= r["reward/short"] <= 0 and 0 <= r["reward/correct"] <= 1.5
    for r in evals:
        assert r["eval/reward"] == pytest.approx(r["eval/reward/correct"] + 0.1 * r["eval/reward/short"], abs=1e-5)
