"""Online DPO: the higher-scored sample is chosen (ties: the first), the missing-EOS penalty
decides a pair, the loss equals the DPO formula on hand-summed completion log-probs, and a
planted reward rises on held-out prompts through the CLI."""

from __future__ import annotations

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import common, online_dpo
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.rewards import RewardConfig, build_reward
from tests.algorithms.conftest import metric_rows, run_cli, tiny_cfg


def _exp(scores, s=5):
    """An experience of len(scores) rows whose tokens all equal the row index."""
    n = len(scores)
    ids = np.repeat(np.arange(n, dtype=np.int32)[:, None], s, axis=1)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((n, s), jnp.int32),
            "completion_mask": jnp.asarray((np.arange(s) >= 2)[None].repeat(n, 0).astype(np.int32)),
            "scores": jnp.asarray(scores, jnp.float32)}


def test_higher_score_is_chosen_and_ties_go_to_the_first():
    scores = [1.0, 0.0,   0.0, 1.0,   0.5, 0.5,   -1.0, -1.0,   -3.0, 2.0]
    batch = online_dpo.preference_batch(_exp(scores))
    want_c, want_r = [], []
    for b in range(len(scores) // 2):
        first, second = scores[2 * b], scores[2 * b + 1]
        c = 2 * b if first >= second else 2 * b + 1
        want_c.append(c)
        want_r.append(4 * b + 1 - c)
    np.testing.assert_array_equal(np.asarray(batch["chosen_input_ids"])[:, 0], want_c)
    np.testing.assert_array_equal(np.asarray(batch["rejected_input_ids"])[:, 0], want_r)
    np.testing.assert_array_equal(np.asarray(batch["score_chosen"]), np.asarray(scores)[want_c])
    assert (np.asarray(batch["score_chosen"]) >= np.asarray(batch["score_rejected"])).all()
    assert np.asarray(online_dpo.choose(jnp.asarray(scores))).tolist() == [0, 1, 0, 0, 1]


def test_missing_eos_penalty_decides_the_pair():
    reward = build_reward(RewardConfig(kind="keyword", pattern="a", normalize=True, missing_eos_penalty=1.0))
    # Same text; the first was cut off at max_new_tokens, the second ended with EOS.
    scores = reward(["p", "p"], ["aa", "aa"], finished=np.array([False, True]))
    np.testing.assert_allclose(scores, [0.0, 1.0])
    assert np.asarray(online_dpo.choose(jnp.asarray(scores))).tolist() == [1]


def test_loss_is_dpo_on_hand_summed_completion_logps():
    cfg = tiny_cfg("online-dpo", "online_dpo.beta=0.3", "mesh.fsdp=1")
    tok = common.tokenizer_from(cfg)
    mesh = common.mesh_from(cfg)
    graphdef, params = nnx.split(common.model_from(cfg, mesh, tok))
    _, ref = nnx.split(common.model_from(cfg, mesh, tok, seed_offset=1))
    rng = np.random.default_rng(0)
    n, s, p = 4, 10, 4  # two pairs; prompts of 4 slots (left-padded), completions of 6 slots
    ids = rng.integers(4, 200, (n, s)).astype(np.int32)
    attn = np.ones((n, s), np.int32)
    attn[[0, 1], 0] = 0  # left padding of prompt 0
    lens = [6, 3, 1, 4]  # completion tokens (EOS included); padding after
    comp = np.zeros((n, s), np.int32)
    for i, k in enumerate(lens):
        comp[i, p:p + k] = 1
        attn[i, p + k:] = 0
    exp = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(attn), "completion_mask": jnp.asarray(comp),
           "scores": jnp.asarray([0.1, 0.7, 0.2, 0.2], jnp.float32)}
    batch = online_dpo.preference_batch(exp)
    batch = {k: v for k, v in batch.items() if not k.startswith("score_")}
    loss_fn = online_dpo.make_loss(graphdef, cfg.algo)
    loss, (weight, metrics, _) = jax.jit(loss_fn)(params, batch, ref, jax.random.key(0), {})
    forward = jax.jit(lambda ps: nnx.merge(graphdef, ps)(jnp.asarray(ids), jnp.asarray(attn)))
    token_logps = {}
    for name, ps in (("policy", params), ("ref", ref)):
        logits = np.asarray(forward(ps), np.float64)
        m = logits.max(-1, keepdims=True)
        token_logps[name] = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))

    def seq_logps(name, row):
        lp = token_logps[name]
        return sum(lp[row, t - 1, ids[row, t]] for t in range(p, p + lens[row]))

    chosen, rejected = [1, 2], [0, 3]  # pair 0: 0.7 > 0.1; pair 1: a tie -> the first
    beta, losses, kls = 0.3, [], []
    for c, r in zip(chosen, rejected):
        dc = seq_logps("policy", c) - seq_logps("ref", c)
        dr = seq_logps("policy", r) - seq_logps("ref", r)
        losses.append(-math.log(1 / (1 + math.exp(-beta * (dc - dr)))))
        kls += [dc, dr]
    assert float(weight) == 2
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["kl"]), np.mean(kls), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("over, key", [
    (["online_dpo.loss_type=nope"], "online_dpo.loss_type"),
    (["online_dpo.loss_type=simpo"], "online_dpo.loss_type"),  # reference-free: not online DPO
    (["online_dpo.beta=0"], "online_dpo.beta"),
    (["online_dpo.label_smoothing=0.5"], "online_dpo.label_smoothing"),
    (["online_dpo.sampling.temperature=-1"], "online_dpo.sampling.temperature"),
    (["online_dpo.reward.kind=model"], "online_dpo.reward.path"),
])
def test_config_errors(over, key):
    with pytest.raises(JaxalignError, match=key.replace(".", r"\.")):
        tiny_cfg("online-dpo", *over)


def test_default_temperature():
    assert load_config(None, [], algorithm="online-dpo").algo.sampling.temperature == 0.9


def test_planted_reward_rises_on_held_out_prompts(tmp_path):
    run = tmp_path / "run"
    rc = run_cli("online-dpo", run, "train.steps=12", "train.eval_every=2")
    assert rc == 0
    rows = metric_rows(run)
    evals = [r["eval/reward"] for r in rows if "eval/reward" in r]
    assert evals[0] < 0.2 and evals[-1] > 0.6, evals
    train_rows = [r for r in rows if "reward/chosen" in r]
    assert len(train_rows) == 12
    for r in train_rows:
        assert all(math.isfinite(v) for v in r.values()), r
        assert r["reward/chosen"] >= r["reward/rejected"]
        assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "accuracy", "logps/chosen",
                "time/generate", "response_length"} <= set(r)
    assert train_rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # the first step: policy == reference
    assert (run / "final" / "config.json").exists()
