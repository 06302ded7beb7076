"""PPO / PPO-max: score placement and GAE against a numpy hand computation (EOS in the last slot,
no EOS, a one-token completion), presets that really change the advantages, running moments
updated once per iteration, the critic warm-up freezing the policy, the critic initialised from a
reward model, config errors naming keys, the planted reward rising under both presets, and a
SIGKILLed run that resumes bit-exactly (running moments and KL coefficient included)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import ppo
from jaxalign.algorithms import ppo_experience as px
from jaxalign.config import load_config, save_config
from jaxalign.errors import JaxalignError
from tests.algorithms.conftest import ROOT, TINY, metric_rows, run_cli, tiny_cfg
from tests.procenv import HANG_S, subprocess_env
# One device: on the 2-core test machine 8 simulated devices only add overhead.
FAST = ["mesh.fsdp=1", "train.plots=false"]


def _algo(preset: str, **kw) -> ppo.Config:
    a = ppo.Config(preset=preset, **kw)
    a.resolve()
    return a


# --------------------------------------------------------------------------- hand computation

P, T, PAD = 3, 5, 2  # prompt slots, completion slots; the pad id is the EOS id (2)
LENGTHS = [5, 5, 1, 3]  # EOS in the last slot; no EOS (hit max_new_tokens); EOS first; EOS third
FINISHED = [1, 0, 1, 1]


def _experience(seed=0, scores=(0.3, -1.2, 2.0, 0.5)):
    """Rows ``[N, P + T]`` laid out like the experience maker's, with pad == EOS after the end."""
    rng = np.random.default_rng(seed)
    n = len(LENGTHS)
    ids = np.full((n, P + T), PAD, np.int32)
    attn = np.zeros((n, P + T), np.int32)
    cmask = np.zeros((n, P + T), np.int32)
    ids[:, 1:P] = rng.integers(3, 50, (n, P - 1))
    attn[:, 1:P] = 1  # left-padded prompt of 2 tokens
    for i, (length, fin) in enumerate(zip(LENGTHS, FINISHED)):
        ids[i, P:P + length] = rng.integers(3, 50, length)
        if fin:
            ids[i, P + length - 1] = PAD  # the EOS
        attn[i, P:P + length] = 1
        cmask[i, P:P + length] = 1
    old = np.where(cmask, -rng.random((n, P + T)) * 3, 0.0).astype(np.float32)
    ref = np.where(cmask, -rng.random((n, P + T)) * 3, 0.0).astype(np.float32)
    exp = {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask, "old_logps": old,
           "ref_logps": ref, "scores": np.asarray(scores, np.float32), "finished": np.asarray(FINISHED, np.float32),
           "lengths": np.asarray(LENGTHS, np.int32)}
    values = rng.normal(size=(n, T)).astype(np.float32)
    return exp, values


def _hand_gae(rewards, values, lengths, gamma, lam):
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b, length in enumerate(lengths):
        last = 0.0
        for t in reversed(range(length)):
            next_v = values[b, t + 1] if t + 1 < length else 0.0  # nothing after the last real token
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    ret = np.stack([np.r_[adv[b, :n] + values[b, :n], np.zeros(T - n)] for b, n in enumerate(LENGTHS)])
    return adv, ret


def _hand(algo, exp, values, kl_coef):
    """Processed scores, per-token rewards, advantages and returns, all in numpy loops."""
    s = exp["scores"].astype(np.float64)
    if algo.score_norm:
        s = (s - s.mean()) / (s.std(ddof=1) + 1e-8)
    if algo.score_clip:
        s = np.clip(s, -algo.score_clip, algo.score_clip)
    kl = (exp["old_logps"] - exp["ref_logps"])[:, P:]
    rewards = np.zeros((len(s), T))
    for b, length in enumerate(LENGTHS):
        rewards[b, :length] = -kl_coef * kl[b, :length]
        rewards[b, length - 1] += s[b]  # the score on the last real completion token
    adv, ret = _hand_gae(rewards, values, LENGTHS, algo.gamma, algo.lam)
    mask = np.arange(T)[None] < np.asarray(LENGTHS)[:, None]
    if algo.whiten_advantages:
        a = adv[mask]
        adv = np.where(mask, (adv - a.mean()) / np.sqrt(a.var(ddof=1) + 1e-8), 0.0)
    return s, rewards, adv, ret, mask


@pytest.mark.parametrize("preset", ["ppo_max", "vanilla"])
def test_advantages_and_returns_match_a_hand_computation(preset):
    algo = _algo(preset)
    exp, values = _experience()
    extras = px.init_extras(0.05)
    buf, new_extras, m = px.prepare(algo, jax.tree.map(jnp.asarray, exp), jnp.asarray(values), extras, T)
    s, rewards, adv, ret, mask = _hand(algo, exp, values, 0.05)
    np.testing.assert_allclose(np.asarray(buf["advantages"]), adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(buf["returns"]), ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(buf["advantages"])[~mask] == 0) and np.all(np.asarray(buf["returns"])[~mask] == 0)
    kl_seq = ((exp["old_logps"] - exp["ref_logps"]) * exp["completion_mask"]).sum(-1)
    np.testing.assert_allclose(float(m["kl_ref"]), kl_seq.mean(), rtol=1e-5)
    mo = new_extras["score_moments"]
    sc = exp["scores"]
    assert float(mo.count) == 4
    np.testing.assert_allclose([float(mo.mean), float(mo.m2)], [sc.mean(), ((sc - sc.mean()) ** 2).sum()],
                               rtol=1e-5)
    if preset == "vanilla":  # whitened over the buffer's real tokens
        a = np.asarray(buf["advantages"])[mask]
        assert abs(a.mean()) < 1e-5 and abs(a.std(ddof=1) - 1) < 1e-4
        np.testing.assert_allclose(float(m["advantages/std"]), 1.0, atol=1e-4)
    else:  # not whitened: the raw GAE (its spread is not 1)
        assert abs(np.asarray(buf["advantages"])[mask].std(ddof=1) - 1) > 0.05


def test_terminal_score_sits_on_the_last_real_completion_token():
    # λ = 0, V = 0, η = 0: the advantage is the per-token reward itself, so it shows where the
    # score went. Rows: EOS in the last slot, no EOS at all, a one-token completion, length 3.
    algo = _algo("none", gamma=1.0, lam=0.0)
    exp, _ = _experience(scores=(1.0, 2.0, 3.0, 4.0))
    buf, _, _ = px.prepare(algo, jax.tree.map(jnp.asarray, exp), jnp.zeros((4, T)), px.init_extras(0.0), T)
    want = np.zeros((4, T))
    for b, length in enumerate(LENGTHS):
        want[b, length - 1] = b + 1.0
    np.testing.assert_array_equal(np.asarray(buf["advantages"]), want)
    # With γ = λ = 1 every real token's return is the score (no bootstrap past the end).
    algo = _algo("none", gamma=1.0, lam=1.0)
    buf, _, _ = px.prepare(algo, jax.tree.map(jnp.asarray, exp), jnp.zeros((4, T)), px.init_extras(0.0), T)
    mask = np.arange(T)[None] < np.asarray(LENGTHS)[:, None]
    np.testing.assert_allclose(np.asarray(buf["returns"]), np.where(mask, np.arange(1, 5)[:, None], 0.0))


def test_running_moments_merge_across_iterations_and_clip():
    algo = _algo("ppo_max", score_clip=0.8)
    e1, v = _experience(0, scores=(0.3, -1.2, 2.0, 0.5))
    e2, _ = _experience(1, scores=(5.0, 4.0, -3.0, 0.0))
    extras = px.init_extras(0.05)
    _, extras, _ = px.prepare(algo, jax.tree.map(jnp.asarray, e1), jnp.asarray(v), extras, T)
    buf, extras, m = px.prepare(algo, jax.tree.map(jnp.asarray, e2), jnp.asarray(v), extras, T)
    allv = np.r_[e1["scores"], e2["scores"]]
    mo = extras["score_moments"]
    np.testing.assert_allclose([float(mo.count), float(mo.mean), float(mo.m2)],
                               [8, allv.mean(), ((allv - allv.mean()) ** 2).sum()], rtol=1e-5)
    # Batch 2's processed scores use the merged moments (mean/std of all 8), clipped to ±0.8.
    s = np.clip((e2["scores"] - allv.mean()) / (allv.std(ddof=1) + 1e-8), -0.8, 0.8)
    np.testing.assert_allclose(float(m["score/processed_mean"]), s.mean(), rtol=1e-5, atol=1e-6)
    # The one-token row (index 2): its only reward is −η·KL + processed score; λ=.95 does not matter.
    kl = (e2["old_logps"] - e2["ref_logps"])[2, P]
    np.testing.assert_allclose(float(buf["advantages"][2, 0]), s[2] - 0.05 * kl - v[2, 0], rtol=1e-5)


def test_adaptive_kl_controller_updates_the_coefficient_in_extras():
    algo = _algo("ppo_max", adaptive_kl=True, kl_target=0.5, kl_horizon=100.0)
    exp, v = _experience()
    _, extras, m = px.prepare(algo, jax.tree.map(jnp.asarray, exp), jnp.asarray(v), px.init_extras(0.1), T)
    kl = float(m["kl_ref"])
    want = 0.1 * (1 + np.clip(kl / 0.5 - 1, -0.2, 0.2) * 4 / 100.0)
    np.testing.assert_allclose(float(extras["kl_coef"]), want, rtol=1e-6)
    assert float(m["kl_coef"]) == pytest.approx(0.1)  # this iteration used the old one


# --------------------------------------------------------------------------- config

def test_presets_fill_defaults_and_explicit_keys_win(tmp_path):
    c = tiny_cfg("ppo", "ppo.preset=vanilla", "ppo.score_norm=true").algo
    assert c.score_norm is True and c.whiten_advantages is True and c.critic_init == "policy"
    c = tiny_cfg("ppo", "ppo.whiten_advantages=true", "ppo.value_clip=0").algo
    assert (c.score_norm, c.score_clip, c.whiten_advantages, c.value_clip) == (True, 5.0, True, 0.0)
    c = tiny_cfg("ppo", "ppo.preset=none", "ppo.critic_warmup_steps=null").algo
    assert (c.score_norm, c.score_clip, c.whiten_advantages, c.value_clip, c.critic_warmup_steps) == (
        False, 0.0, False, 0.0, 0)
    # The resolved config.yaml a run writes loads back to the same section.
    cfg = tiny_cfg("ppo", "ppo.preset=vanilla")
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", algorithm="ppo").algo == cfg.algo


@pytest.mark.parametrize("over, key", [
    (["ppo.preset=max"], "ppo.preset"),
    (["ppo.minibatch_size=5"], "ppo.minibatch_size"),
    (["train.micro_batch_size=3"], "train.micro_batch_size"),
    (["ppo.kl_estimator=k4"], "ppo.kl_estimator"),
    (["ppo.critic_init=reward_model"], "ppo.critic_init"),
    (["ppo.critic_warmup_steps=30"], "ppo.critic_warmup_steps"),
    (["ppo.gamma=1.5"], "ppo.gamma"),
    (["ppo.value_clip=-1"], "ppo.value_clip"),
    (["ppo.adaptive_kl=true", "ppo.kl_coef=0"], "ppo.adaptive_kl"),
    (["ppo.ppo_epochs=0"], "ppo.ppo_epochs"),
    (["ppo.sampling.temperature=0"], "ppo.sampling.temperature"),
    (["ppo.reward.kind=model"], "ppo.reward.path"),
    (["ppo.scor_norm=true"], "ppo.score_norm"),
])
def test_config_errors_name_the_key(over, key):
    with pytest.raises(JaxalignError, match=re.escape(key)):
        tiny_cfg("ppo", *over)


def test_ptx_data_must_be_sft_data():
    cfg = tiny_cfg("ppo", *FAST + ["ppo.ptx_data=shipped:prompts_tiny.jsonl"])
    with pytest.raises(JaxalignError, match=r"ppo\.ptx_data"):
        ppo.build_job(cfg)


# --------------------------------------------------------------------------- critic and the step

def test_critic_starts_from_the_reward_model(tmp_path):
    import flax.nnx as nnx

    from jaxalign.algorithms import common
    from jaxalign.api import save_model
    from jaxalign.models.heads import scalar_head_from_lm

    cfg = tiny_cfg("ppo", *FAST)
    tok = common.tokenizer_from(cfg)
    rm = scalar_head_from_lm(common.model_from(cfg, common.mesh_from(cfg), tok, seed_offset=7), seed=3)
    save_model(rm, tmp_path / "rm")
    _, rm_params = nnx.split(rm)
    over = FAST + ["ppo.reward.kind=model", f"ppo.reward.path={tmp_path / 'rm'}"]
    job = ppo.build_job(tiny_cfg("ppo", *over))
    got = jax.tree.leaves(job.params["critic"])
    want = jax.tree.leaves(rm_params)
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    # Without a reward model (keyword reward) the critic is the policy's backbone with a zero head.
    job = ppo.build_job(tiny_cfg("ppo", *FAST))
    crit = job.params["critic"]
    assert np.all(np.asarray(jax.tree.leaves(crit["score"])[0]) == 0)
    pol = jax.tree.leaves(job.params["policy"])
    back = jax.tree.leaves(crit["backbone"])
    assert len(pol) == len(back) and all(np.array_equal(a, b) for a, b in zip(pol, back))


def test_old_values_are_the_critic_value_of_the_state_before_each_completion_token():
    import flax.nnx as nnx

    from jaxalign.algorithms import common
    from jaxalign.models.heads import scalar_head_from_lm

    cfg = tiny_cfg("ppo", *FAST)
    critic = scalar_head_from_lm(common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg)), seed=1)
    graphdef, params = nnx.split(critic)
    exp, _ = _experience()
    exp = jax.tree.map(jnp.asarray, exp)
    got = np.asarray(px.old_values(graphdef, params, exp, T))
    chunked = np.asarray(px.old_values(graphdef, params, exp, T, rows_per_chunk=2))
    np.testing.assert_allclose(chunked, got, rtol=1e-5, atol=1e-6)
    for t in range(T):  # independently: the value at the end of the prefix that precedes slot t
        want = critic.token_values(exp["input_ids"][:, :P + t], exp["attention_mask"][:, :P + t])[:, -1]
        np.testing.assert_allclose(got[:, t], np.asarray(want), rtol=1e-5, atol=1e-5)


def test_one_iteration_updates_moments_once_and_warmup_freezes_the_policy():
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxalign.train.state import TrainState

    # 8 rollouts, 2 minibatches x 2 epochs = 4 updates per iteration; 1 warm-up iteration.
    over = FAST + ["train.batch_size=4", "ppo.num_generations=2", "ppo.minibatch_size=4", "ppo.ppo_epochs=2",
                   "ppo.critic_warmup_steps=1", "train.steps=4", "ppo.ptx_data=shipped:sft_tiny.jsonl",
                   "ppo.ptx_coef=0.1"]
    cfg = tiny_cfg("ppo", *over)
    job = ppo.build_job(cfg)
    # Replicated in and out (as the loop does with explicit shardings): one compile of each program.
    rep = NamedSharding(job.mesh, PartitionSpec())
    state = jax.device_put(TrainState.create(job.params, job.tx, cfg.seed, job.extras), rep)
    step = jax.jit(job.step_fn, out_shardings=(jax.tree.map(lambda _: rep, state), None))
    exp, _ = job.experience(state, next(job.train_batches))
    s1, m1 = step(state, exp, None)
    assert float(s1.extras["score_moments"].count) == 8  # once per iteration, not per update
    assert int(s1.step) == 1 and float(m1["critic_warmup"]) == 1.0 and float(m1["lr"]) == 0.0
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(s1.params["policy"], state.params["policy"])  # warm-up: the policy did not move
    # ...so every update of that iteration saw ratio 1: the training log-probs line up with the
    # sampler's (a shifted slice would not).
    assert float(m1["approx_kl"]) < 1e-5 and float(m1["clipfrac"]) == 0.0
    assert not same(s1.params["critic"], state.params["critic"])
    exp2, _ = job.experience(s1, next(job.train_batches))
    s2, m2 = step(s1, exp2, None)
    assert float(s2.extras["score_moments"].count) == 16 and float(m2["critic_warmup"]) == 0.0
    assert not same(s2.params["policy"], s1.params["policy"])
    for k in ("clipfrac", "vf_clipfrac", "value_loss", "explained_variance", "approx_kl", "entropy", "kl_ref",
              "advantages/std", "score/running_std"):
        assert np.isfinite(float(m2[k])), k
    # PPO-ptx: the SFT rows ride in the buffer (as many as rollouts) and their LM loss is reported.
    assert exp["ptx_input_ids"].shape[0] == 8 and float(m2["ptx_loss"]) > 0


def test_ptx_batches_resume_with_the_prompts():
    from jaxalign.algorithms import common, data_setup

    cfg = tiny_cfg("ppo", *FAST + ["ppo.ptx_data=shipped:sft_tiny.jsonl"])
    tok = common.tokenizer_from(cfg)
    train, _ = data_setup.datasets_from(cfg, tok, ("prompt",))

    def make():
        prompts, _ = data_setup.batch_iterators(cfg, train, [], tok.pad_token_id)
        return ppo._WithPtx(prompts, ppo._ptx_batches(cfg, tok, 32))

    it = make()
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))
    want = [next(it) for _ in range(2)]
    it2 = make()
    it2.load_state_dict(state)
    got = [next(it2) for _ in range(2)]
    for a, b in zip(got, want):
        for part in ("prompts", "ptx"):
            assert a[part].keys() == b[part].keys()
            assert all(np.array_equal(a[part][k], b[part][k]) for k in a[part])


# --------------------------------------------------------------------------- end to end

def _rows(run_dir):
    rows = metric_rows(run_dir)
    return [r for r in rows if "eval/reward" in r], [r for r in rows if "loss" in r]


def test_ppo_max_raises_the_planted_reward_on_held_out_prompts(tmp_path):
    # Critic warm-up for 2 iterations: the eval at step 2 is the untouched starting policy.
    over = FAST + ["train.steps=20", "train.eval_every=2", "ppo.minibatch_size=32", "ppo.ppo_epochs=1"]
    assert run_cli("ppo", tmp_path / "run", *over) == 0
    evals, rows = _rows(tmp_path / "run")
    start, end = evals[0]["eval/reward"], evals[-1]["eval/reward"]
    assert start < 0.1 and end > 0.6 and end > start + 0.5, [e["eval/reward"] for e in evals]
    assert [r["critic_warmup"] for r in rows[:1]] == [1.0]
    for k in ("kl_ref", "entropy", "clipfrac", "vf_clipfrac", "value_loss", "explained_variance", "approx_kl",
              "reward/mean", "reward/std", "response_length", "score/running_mean"):
        assert all(np.isfinite(r[k]) for r in rows), k
    assert rows[-1]["kl_ref"] > 0  # the policy moved away from the reference
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_vanilla_raises_the_planted_reward_on_held_out_prompts(tmp_path):
    # Raw (unnormalised) scores: scale the planted fraction to 0..10 so it outweighs the KL term.
    over = FAST + ["train.steps=20", "train.eval_every=5", "ppo.minibatch_size=32", "ppo.ppo_epochs=1",
                   "ppo.preset=vanilla", "ppo.critic_warmup_steps=null", "ppo.reward.scale=10"]
    assert run_cli("ppo", tmp_path / "run", *over) == 0
    evals, rows = _rows(tmp_path / "run")
    start, end = evals[0]["eval/reward"], evals[-1]["eval/reward"]
    assert start < 2.0 and end > 6.0 and end > start + 4.0, [e["eval/reward"] for e in evals]
    assert all(abs(r["advantages/mean"]) < 1e-3 and abs(r["advantages/std"] - 1) < 1e-2 for r in rows)
    assert all(np.isfinite(r["kl_ref"]) for r in rows) and rows[-1]["kl_ref"] > 0


# --------------------------------------------------------------------------- resume

STEPS = 8
RESUME = FAST + [f"train.steps={STEPS}", "train.eval_every=0", "train.log_every=1", "data.eval_fraction=0",
                 "train.batch_size=4", "ppo.num_generations=2", "ppo.minibatch_size=4", "ppo.ppo_epochs=2",
                 "ppo.critic_warmup_steps=2", "ppo.adaptive_kl=true", "ppo.kl_target=0.5", "ppo.kl_horizon=50"]


def _start(run_dir: Path, env, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jaxalign.cli", "ppo", "--config", TINY["ppo"], "--run-dir", str(run_dir), "--quiet",
           *RESUME, *extra]
    err = open(run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.err", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


def _checkpoints(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name)) if d.is_dir() else []


def _restore(run_dir: Path, step: int):
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(run_dir / "checkpoints")
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    mgr.close()
    return out["state"]


def test_sigkill_mid_run_then_rerun_is_bit_exact(tmp_path):
    env = subprocess_env()  # the session's compilation cache: the runs below reuse the first one's programs
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = _start(ref, env)  # uninterrupted; it also fills the compilation cache
    assert proc.wait(timeout=HANG_S) == 0
    proc = _start(run, env, "train.save_every=1")
    t0 = time.monotonic()
    while len(_checkpoints(run)) < 3:  # past the critic warm-up, mid-run
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() - t0 < HANG_S
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = _checkpoints(run)
    assert done[-1] < STEPS and not (run / "final").exists(), done
    proc = _start(run, env, "train.save_every=1")
    assert proc.wait(timeout=HANG_S) == 0
    _, rows = _rows(run)
    _, want = _rows(ref)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    timing = ("step_time", "tokens_per_s", "time/generate", "time/score")
    for r, q in zip(rows, want):
        assert {k: v for k, v in r.items() if k not in timing} == {k: v for k, v in q.items() if k not in timing}
    assert rows[0]["kl_coef"] != rows[-1]["kl_coef"]  # the adaptive controller moved it
    assert (run / "final" / "model.safetensors").read_bytes() == (ref / "final" / "model.safetensors").read_bytes()
    a, b = _restore(run, STEPS), _restore(ref, STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # critic, optimizer, moments, KL coefficient
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert float(a["extras"]["score_moments"]["count"]) == STEPS * 8
