"""The GRPO family's switches of ``jaxalign grpo`` (GSPO, DAPO, CISPO, Dr. GRPO, RLOO's sequence
ratio): defaults resolved per advantage, config errors, DAPO's experience hooks on a toy maker,
and each switch on the tiny planted-reward config raising held-out reward. The loss maths is
tested in tests/losses/test_policy_gradient.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms.experience import DynamicSampling, OverlongPenalty
from jaxalign.errors import JaxalignError
from tests.algorithms.conftest import SMALLEST_MODEL, metric_rows, run_cli, tiny_cfg


def test_defaults_follow_trl_per_advantage():
    g = tiny_cfg("grpo").algo
    assert (g.kl_coef, g.ratio_level, g.loss_aggregation) == (0.0, "token", "dapo")
    r = tiny_cfg("grpo", "grpo.advantage=rloo").algo
    assert (r.kl_coef, r.ratio_level, r.loss_aggregation) == (0.05, "sequence_sum", "grpo")
    # explicit values win; the old aggregation names are aliases of TRL's
    r = tiny_cfg("grpo", "grpo.advantage=rloo", "grpo.beta=0", "grpo.importance_sampling=token",
                 "grpo.aggregation=token_mean").algo
    assert (r.kl_coef, r.ratio_level, r.loss_aggregation) == (0.0, "token", "dapo")
    assert tiny_cfg("grpo", "grpo.aggregation=sequence_mean").algo.loss_aggregation == "grpo"
    # GSPO's objective is per sequence: its default aggregation is TRL's 'grpo'
    assert tiny_cfg("grpo", "grpo.importance_sampling=sequence").algo.loss_aggregation == "grpo"


@pytest.mark.parametrize("over, key", [
    (["grpo.loss=ppo"], "grpo.loss"),
    (["grpo.importance_sampling=tokens"], "grpo.importance_sampling"),
    (["grpo.aggregation=mean"], "grpo.aggregation"),
    (["grpo.clip_eps_high=0"], "grpo.clip_eps_high"),
    (["grpo.beta=-0.1"], "grpo.beta"),
    (["grpo.max_refills=-1"], "grpo.max_refills"),
    (["grpo.overlong.buffer=0"], "grpo.overlong.buffer"),
    (["grpo.overlong.buffer=17"], "grpo.overlong.buffer"),  # more than max_new_tokens (16)
    (["grpo.overlong.max_length=0"], "grpo.overlong.max_length"),
    (["grpo.overlong.bufer=2"], "grpo.overlong"),
])
def test_config_errors(over, key):
    with pytest.raises(JaxalignError, match=key.replace(".", r"\.")):
        tiny_cfg("grpo", *over)


def test_overlong_penalty_is_added_to_the_scores():
    f = OverlongPenalty(max_length=16, buffer=4)
    out = f({"lengths": np.array([3, 12, 14, 16])}, None, jnp.array([1.0, 1.0, 0.5, 0.0]))
    np.testing.assert_allclose(out, [1.0, 1.0, 0.0, -1.0])


def test_rloo_loss_of_the_model_is_trl_sequence_level_formula():
    """``advantage: rloo`` with its defaults, end to end through the algorithm's loss on a tiny
    model: the value equals RLOOTrainer's formula (trl/trainer/rloo_trainer.py lines 1822-1833,
    ported to torch) on the model's log-probs, and the parameter gradient equals the model's
    vector-Jacobian product with TRL's gradient with respect to those log-probs."""
    torch = pytest.importorskip("torch")
    import flax.nnx as nnx

    from jaxalign.algorithms import common, grpo
    from jaxalign.losses import shifted_token_logprobs

    cfg = tiny_cfg("grpo", "grpo.advantage=rloo", "mesh.fsdp=1", *SMALLEST_MODEL)
    model = common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    b, p, t = 4, 3, 5
    ids = jnp.asarray(rng.integers(3, model.config.vocab_size, (b, p + t)), jnp.int32)
    comp = np.zeros((b, p + t), np.int32)
    for i, n in enumerate([5, 2, 4, 1]):
        comp[i, p:p + n] = 1
    attn = jnp.asarray((np.arange(p + t)[None] < p + np.array([5, 2, 4, 1])[:, None]).astype(np.int32))

    def logps_of(prm):
        logits = nnx.merge(graphdef, prm)(ids, attn)
        return shifted_token_logprobs(logits, ids, temperature=cfg.algo.sampling.temperature)

    lp = np.asarray(logps_of(params), np.float64)
    old = lp + rng.normal(0, 0.15, lp.shape)
    adv = rng.normal(0, 1, b)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": jnp.asarray(comp),
             "old_logps": jnp.asarray(old, jnp.float32), "advantages": jnp.asarray(adv, jnp.float32)}
    loss_fn = grpo.make_loss(graphdef, cfg.algo, cfg.algo.sampling.temperature)
    (loss, (weight, _, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None, None, None)

    tl = torch.tensor(lp, requires_grad=True)
    mask = torch.tensor(comp, dtype=torch.float64)
    coef_1 = torch.exp((tl * mask).sum(1) - (torch.tensor(old) * mask).sum(1))
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
    a = torch.tensor(adv)
    want = (-torch.min(coef_1 * a, coef_2 * a)).mean()
    want.backward()
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-4, atol=1e-6)
    assert float(weight) == b  # one unit per sequence
    _, vjp = jax.vjp(logps_of, params)
    (want_grads,) = vjp(jnp.asarray(tl.grad.numpy(), jnp.float32))
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-6)


# -- dynamic sampling on a toy experience maker ---------------------------------------------------

G, T = 2, 3


def _maker(batches):
    """A toy ``make(prompt_batch, key)``: the experience of prompt batch ``id`` has the scores given
    for it, prompts ``width`` wide, and ``old_logps`` that name the batch and row."""
    calls = []

    def make(prompt_batch, key):
        i = prompt_batch["id"]
        scores, width = batches[i]
        n = len(scores)
        cols = width + T
        exp = {"input_ids": jnp.full((n, cols), 5, jnp.int32),
               "attention_mask": jnp.ones((n, cols), jnp.int32),
               "completion_mask": jnp.asarray(np.r_[np.zeros(width), np.ones(T)][None].repeat(n, 0), jnp.int32),
               "old_logps": jnp.asarray(100.0 * i + np.arange(n)[:, None] + np.zeros((1, cols)), jnp.float32),
               "scores": jnp.asarray(scores, jnp.float32), "lengths": jnp.full((n,), T, jnp.int32)}
        calls.append((i, key))
        return exp, (None, None), {"reward/mean": float(np.mean(scores)), "time/generate": 1.0, "time/score": 0.5}

    return make, calls


def _drawer(ids):
    it = iter(ids)
    return lambda: next(({"id": i} for i in it), None)


def _rows(exp):
    """(batch, row) of every row, from the toy ``old_logps`` at the last column."""
    v = np.asarray(exp["old_logps"][:, -1]).astype(int)
    return [(int(x) // 100, int(x) % 100) for x in v]


def test_dynamic_sampling_drops_equal_groups_and_refills():
    # batch 0: group 0 all equal (dropped), group 1 informative; batch 1: nothing informative;
    # batch 2: group 0 informative. Two refills fill the batch with two informative groups.
    batches = {0: ([1, 1, 0, 1], 4), 1: ([0, 0, 3, 3], 6), 2: ([2, 3, 5, 5], 5)}
    make, calls = _maker(batches)
    key = jax.random.key(0)
    exp, metrics = DynamicSampling(G, max_refills=4)(make, {"id": 0}, key, _drawer([1, 2, 9]))
    assert _rows(exp) == [(0, 2), (0, 3), (2, 0), (2, 1)]
    np.testing.assert_array_equal(exp["scores"], [0, 1, 2, 3])
    assert metrics["dynamic/refills"] == 2 and metrics["dynamic/dropped_groups"] == 4
    assert metrics["dynamic/filled_groups"] == 0
    assert metrics["time/generate"] == 3.0 and metrics["reward/mean"] == 0.75  # the step's own prompts
    # every sampling has its own key, derived from the step's
    assert [c[0] for c in calls] == [0, 1, 2]
    assert len({tuple(np.asarray(jax.random.key_data(k)).ravel()) for _, k in calls}) == 3
    # rows from narrower prompt batches are left-padded to the widest (6 + T columns)
    assert exp["input_ids"].shape == (4, 6 + T)
    np.testing.assert_array_equal(exp["attention_mask"][:2, :2], 0)  # batch 0 was 4 wide
    np.testing.assert_array_equal(exp["attention_mask"][2:, :1], 0)  # batch 2 was 5 wide
    np.testing.assert_array_equal(exp["completion_mask"][:, -T:], 1)
    np.testing.assert_array_equal(exp["completion_mask"][:, :-T], 0)


def test_dynamic_sampling_stops_at_max_refills_and_fills_with_dropped_groups():
    batches = {0: ([1, 1, 0, 1], 4), 1: ([0, 0, 3, 3], 4), 2: ([2, 3, 5, 5], 4)}
    make, calls = _maker(batches)
    exp, metrics = DynamicSampling(G, max_refills=1)(make, {"id": 0}, jax.random.key(0), _drawer([1, 2]))
    assert [c[0] for c in calls] == [0, 1]
    # the informative group first, then the first dropped group in draw order
    assert _rows(exp) == [(0, 2), (0, 3), (0, 0), (0, 1)]
    assert metrics["dynamic/refills"] == 1 and metrics["dynamic/filled_groups"] == 1
    assert metrics["dynamic/dropped_groups"] == 3


def test_dynamic_sampling_when_prompts_run_out_or_all_informative():
    make, calls = _maker({0: ([0, 0, 1, 1], 4)})
    exp, metrics = DynamicSampling(G, max_refills=3)(make, {"id": 0}, jax.random.key(0), _drawer([]))
    assert _rows(exp) == [(0, 0), (0, 1), (0, 2), (0, 3)] and metrics["dynamic/filled_groups"] == 2
    assert metrics["dynamic/refills"] == 0
    make, calls = _maker({0: ([0, 1, 2, 1], 4)})
    exp, metrics = DynamicSampling(G, max_refills=3)(make, {"id": 0}, jax.random.key(0), _drawer([0]))
    assert len(calls) == 1 and _rows(exp) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert metrics["dynamic/dropped_groups"] == 0 and metrics["dynamic/refills"] == 0


# -- each switch on the planted reward ------------------------------------------------------------

SWITCHES = {
    # GSPO with its paper's clip range (arXiv:2507.18071: 3e-4 / 4e-4). GSPO-token with sequence
    # advantages has GSPO's value and gradient (tests/losses/test_policy_gradient.py), so no run.
    "gspo": ["grpo.importance_sampling=sequence", "grpo.clip_eps=3e-4", "grpo.clip_eps_high=4e-4"],
    # DAPO: clip-higher, dynamic sampling, overlong shaping over the last 4 of 16 tokens
    "dapo": ["grpo.clip_eps_high=0.28", "grpo.dynamic_sampling=true", "grpo.overlong.buffer=4"],
    "cispo": ["grpo.loss=cispo", "grpo.clip_eps_high=4.0"],
    "dr_grpo": ["grpo.aggregation=dr_grpo", "grpo.scale_rewards=none"],
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_planted_reward_rises_with_each_switch(tmp_path, switch):
    run = tmp_path / switch
    rc = run_cli("grpo", run, "train.steps=20", "train.eval_every=20", "train.eval_at_start=true",
                 *SWITCHES[switch])
    assert rc == 0
    rows = metric_rows(run)
    evals = [r["eval/reward"] for r in rows if "eval/reward" in r]
    assert evals[0] < 0.2 and evals[-1] > 0.6, evals
    train_rows = [r for r in rows if "reward/mean" in r]
    assert all(k in train_rows[-1] for k in ("clipfrac", "clip_low", "clip_high", "approx_kl", "entropy"))
    if switch == "dapo":  # the random start has groups without signal: dropped and refilled
        assert sum(r["dynamic/dropped_groups"] for r in train_rows) > 0
        assert sum(r["dynamic/refills"] for r in train_rows) > 0
