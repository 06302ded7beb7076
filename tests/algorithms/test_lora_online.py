"""model.lora for the online algorithms (jaxalign.algorithms.online): GRPO, online DPO and RAFT
train the adapters alone on a frozen base that stays bit-identical; the reference (GRPO's KL
log-probs, online DPO's reference model) is that same base with the adapters off, no copy,
checked against log-probs of an independently built base model; with B = 0 at the start the
policy's log-probs are the reference's; a run exports the merged model plus the adapter and
resumes bit-exactly."""

from __future__ import annotations

import json
import shutil

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign import algorithms
from jaxalign.algorithms import common, lora as lora_algo, online
from jaxalign.algorithms.experience import make_logps_fn
from jaxalign.losses import shifted_token_logprobs
from jaxalign.models import lora
from jaxalign.parallel.batch import global_batch
from jaxalign.train.compile import compile_step, init_state
from jaxalign.train.loop import run
from tests.algorithms.conftest import SMALLEST_MODEL, tiny_cfg

FAST = ["quiet=true", "train.plots=false", "train.save_final=false", "train.eval_every=0",
        "train.eval_at_start=false"]
LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
CONSTANT = ["optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0"]
GRPO = [*FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "grpo.beta=0.04", "train.batch_size=2",
        "grpo.num_generations=2", "grpo.sampling.max_new_tokens=8"]


def _np(tree):
    return [np.array(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _base_model(cfg):
    """The run's base built anew without ``model.lora`` (the same seed: the same random init)."""
    plain = tiny_cfg(cfg.algorithm, "quiet=true")
    plain.model, plain.seed = cfg.model.__class__(**{**vars(cfg.model), "lora": None}), cfg.seed
    return common.model_from(plain, common.mesh_from(plain), common.tokenizer_from(plain))


def _one_step(job, cfg, plant_advantages=False):
    """``(experience batch, adapters before (host copies, a State), state, metrics after one step)``;
    checks the base is bit-identical after it. ``plant_advantages``: replace the batch's
    advantages by +-1 so the policy gradient is non-zero whatever the tiny model sampled (its
    8-token completions often score alike, which leaves only float noise as a gradient)."""
    start = jax.tree.map(np.array, jax.device_get(job.params))
    state = init_state(job, cfg.seed)
    base_before = _np(job.frozen[0])
    batch, _ = job.experience(state, next(job.train_batches))
    if plant_advantages:
        n = batch["advantages"].shape[0]
        batch = {**batch, "advantages": np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)}
    host = {k: np.asarray(v) for k, v in batch.items()}
    state, metrics = compile_step(job, state)(state, global_batch(batch, job.mesh), job.frozen)
    assert np.isfinite(float(metrics["loss"]))
    for before, after in zip(base_before, _np(job.frozen[0])):
        np.testing.assert_array_equal(after, before)
    return host, start, state, metrics


def _only_b_moved(start, state):
    before = _np(start)
    # B starts at 0, so step 1 gives A no gradient (dL/dA = B^T ... = 0): the B's move, the A's not.
    changed = [not np.array_equal(a, b) for a, b in zip(before, _np(state.params))]
    assert sum(changed) == len(changed) // 2 and len(changed) == 14


def test_grpo_trains_only_the_adapters_and_its_reference_is_the_base():
    cfg = tiny_cfg("grpo", *GRPO)
    job = algorithms.build_job(cfg)
    assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(job.params))
    base, inner = job.frozen
    assert inner is None and job.lora == lora_algo.LoraInfo(ref_is_base=False, base_reference=True)
    assert not lora.has_lora(base) and "no copy" in lora_algo.plan_note(job)
    exp, adapters_before, state, metrics = _one_step(job, cfg, plant_advantages=True)
    _only_b_moved(adapters_before, state)
    # The experience's reference log-probs are the base model's (built independently, no adapters).
    ref_model = _base_model(cfg)
    logits = ref_model(exp["input_ids"], exp["attention_mask"])
    want = shifted_token_logprobs(logits, exp["input_ids"], temperature=cfg.algo.sampling.temperature)
    np.testing.assert_allclose(exp["ref_logps"], np.asarray(want), atol=2e-5, rtol=1e-5)
    # B = 0 at the start: the policy (base + adapters) gives exactly the reference's log-probs.
    graphdef = nnx.graphdef(common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg)))
    policy = make_logps_fn(graphdef, cfg.algo.sampling.temperature, job.mesh)(lora.join_params(base, adapters_before),
                                                                    exp["input_ids"], exp["attention_mask"])
    np.testing.assert_array_equal(np.asarray(policy), exp["ref_logps"])
    assert float(metrics["kl_ref"]) == pytest.approx(0.0, abs=1e-6)


def test_the_setup_reference_is_the_base_arrays_not_a_copy():
    cfg = tiny_cfg("grpo", *GRPO)
    s = online.setup(cfg, num_samples=2, sampling=cfg.algo.sampling, reward=cfg.algo.reward, need_ref=True)
    ref, base = jax.tree.leaves(s.ref_params), jax.tree.leaves(s.base)
    assert ref and all(a is b for a, b in zip(ref, base)) and len(ref) == len(base)
    _, own_base = lora.split_params(s.params)
    assert all(a is b for a, b in zip(jax.tree.leaves(own_base), base))
    assert s.ref_graphdef != s.graphdef and s.maker.ref_params is s.ref_params


def test_a_grpo_run_exports_base_plus_adapters_and_resumes_bit_exactly(tmp_path):
    from jaxalign.api import forward_logits
    from jaxalign.io.load import load_model
    from jaxalign.io.peft import read_peft_config

    ov = [*GRPO, "train.steps=2", "train.save_every=1", "train.keep_checkpoints=3", "train.log_every=1",
          "train.save_final=true"]
    cfg = tiny_cfg("grpo", *ov)
    job = algorithms.build_job(cfg)
    a = run(cfg, job, tmp_path / "a")
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(r["loss"]) and np.isfinite(r["kl_ref"]) for r in losses)
    graphdef = nnx.graphdef(common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg)))
    trained = nnx.merge(graphdef, lora.join_params(job.frozen[0], a["state"].params))
    ids = np.arange(40).reshape(2, 20) % 200 + 3
    merged = load_model(tmp_path / "a" / "final")
    assert not lora.has_lora(merged)
    np.testing.assert_allclose(np.asarray(forward_logits(merged, ids)), np.asarray(forward_logits(trained, ids)),
                               atol=1e-5)
    assert read_peft_config(tmp_path / "a" / "final" / "adapter")["r"] == 4
    # Resume from step 1: the same adapters and optimizer state, bit for bit.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2")
    shutil.rmtree(tmp_path / "b" / "final")
    cfg_b = tiny_cfg("grpo", *ov)
    b = run(cfg_b, algorithms.build_job(cfg_b), tmp_path / "b")
    for x, y in zip(_np(a["state"]), _np(b["state"])):
        np.testing.assert_array_equal(x, y)
    assert len(jax.tree.leaves(b["state"].params)) == 14  # the checkpoint holds the adapters only


def test_online_dpo_reference_is_the_base_with_adapters_off():
    from jaxalign.algorithms import dpo

    cfg = tiny_cfg("online-dpo", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=2",
                   "online_dpo.sampling.max_new_tokens=8")
    job = algorithms.build_job(cfg)
    base, inner = job.frozen
    assert inner is None and job.lora.ref_is_base and "no copy" in lora_algo.plan_note(job)
    batch, adapters_before, state, metrics = _one_step(job, cfg)
    _only_b_moved(adapters_before, state)
    assert float(metrics["loss"]) == pytest.approx(np.log(2), abs=1e-5)  # policy = reference at step 1
    # After the step: rewards = beta * (policy - reference) with the reference an independent base.
    graphdef = nnx.graphdef(common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg)))
    policy = nnx.merge(graphdef, lora.join_params(base, state.params))
    pw, pl, _, _ = dpo.pair_logps(policy, batch)
    rw, rl, _, _ = dpo.pair_logps(_base_model(cfg), batch)
    _, (_, m, _) = job.loss_fn(state.params, batch, job.frozen, jax.random.key(0), state.extras)
    beta = cfg.algo.beta
    np.testing.assert_allclose(float(m["rewards/chosen"]), beta * float(np.mean(pw - rw)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m["rewards/rejected"]), beta * float(np.mean(pl - rl)), rtol=1e-4, atol=1e-6)
    assert abs(float(m["rewards/chosen"])) > 1e-6


def test_raft_trains_only_the_adapters():
    cfg = tiny_cfg("raft", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=2",
                   "raft.sampling.max_new_tokens=8")
    job = algorithms.build_job(cfg)
    assert job.frozen[1] is None and job.lora == lora_algo.LoraInfo(False, False)  # no reference
    assert "no copy" not in lora_algo.plan_note(job)
    _, start, state, _ = _one_step(job, cfg)
    changed = [not np.array_equal(a, b) for a, b in zip(_np(start), _np(state.params))]
    assert len(changed) == 14 and sum(changed) >= 7  # RAFT may take several updates: A moves after B


def test_ppo_critic_is_a_second_adapter_set_on_the_same_base():
    from jaxalign.algorithms import ppo

    cfg = tiny_cfg("ppo", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=2",
                   "ppo.num_generations=2", "ppo.minibatch_size=4", "ppo.critic_warmup_steps=0",
                   "ppo.sampling.max_new_tokens=8")
    # The critic's backbone holds the policy's base arrays themselves (one buffer per weight).
    s = online.setup(cfg, num_samples=2, sampling=cfg.algo.sampling, reward=cfg.algo.reward, need_ref=True)
    full = ppo.spec(cfg).params(s)
    critic_base = lora.split_params(full["critic"], nnx.PathContains("score"))[1]
    assert [id(x) for x in jax.tree.leaves(critic_base)] == [id(x) for x in jax.tree.leaves(s.base)]
    tr = ppo.lora_split(s, full)
    pa, ca = (nnx.to_flat_state(tr[k]) for k in ("policy", "critic"))
    assert len(pa) == 14 and len(ca) == 15  # the critic: its own 14 adapters + the value head
    a_p = [np.asarray(v[...]) for p, v in pa if p[-1] == "lora_a"]
    a_c = [np.asarray(v[...]) for p, v in ca if p[-1] == "lora_a"]
    assert all(not np.array_equal(x, y) for x, y in zip(a_p, a_c))  # distinct adapters, not a copy
    # One iteration: the policy's and the critic's adapters and the head train, the base does not.
    job = algorithms.build_job(cfg)
    assert set(job.params) == {"policy", "critic"} and job.frozen[1] is None
    _, start, state, metrics = _one_step(job, cfg)
    assert np.isfinite(float(metrics["value_loss"]))
    flat = lambda t: [(k, np.asarray(v)) for k, v in nnx.to_flat_state(jax.device_get(t["critic"]))]  # noqa: E731
    moved = {k[-1] for (k, a), (_, b) in zip(flat(start), flat(state.params)) if not np.array_equal(a, b)}
    # The head starts at 0, so the critic's first update moves the head only, the second its B's
    # (its A's get a gradient once B is non-zero). The policy moves its B's, then its A's.
    assert moved == {"lora_b", "weight"}
    flat_p = lambda t: [(k, np.asarray(v)) for k, v in nnx.to_flat_state(jax.device_get(t["policy"]))]  # noqa: E731
    moved_p = [k[-1] for (k, a), (_, b) in zip(flat_p(start), flat_p(state.params)) if not np.array_equal(a, b)]
    assert moved_p.count("lora_b") == 7


def test_rm_trains_the_adapters_and_the_head_only():
    from jaxalign.algorithms import rm

    cfg = tiny_cfg("rm", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=4")
    job = algorithms.build_job(cfg)
    flat = nnx.to_flat_state(job.params)
    assert len(flat) == 15 and [p for p, v in flat if not isinstance(v, nnx.LoRAParam)] == [("score", "weight")]
    start = jax.tree.map(np.array, jax.device_get(job.params))
    state = init_state(job, cfg.seed)
    base_before = _np(job.frozen[0])
    batch = next(job.train_batches)
    state, metrics = compile_step(job, state)(state, global_batch(batch, job.mesh), job.frozen)
    assert np.isfinite(float(metrics["loss"]))
    for before, after in zip(base_before, _np(job.frozen[0])):
        np.testing.assert_array_equal(after, before)
    moved = [p[-1] for (p, a), (_, b) in zip(nnx.to_flat_state(start), nnx.to_flat_state(jax.device_get(state.params)))
             if not np.array_equal(np.asarray(a), np.asarray(b))]
    assert sorted(moved) == ["lora_b"] * 7 + ["weight"]
    # The export merges the adapters: the merged reward model scores as base + adapters.
    graphdef = nnx.graphdef(rm.build_model(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg)))
    model = nnx.merge(graphdef, lora.join_params(job.frozen[0], state.params))
    ids = np.arange(40).reshape(2, 20) % 200 + 3
    np.testing.assert_allclose(np.asarray(lora.merged_model(model)(ids)), np.asarray(model(ids)), atol=1e-5)


def test_rm_exports_a_peft_adapter_that_starts_an_rm_run(tmp_path):
    """A LoRA reward model's export holds ``adapter/`` (SEQ_CLS, head included), and an ``rm``
    run with ``model.lora.adapter`` on it starts from the trained adapters and head: its
    scores equal the trained model's; a fresh run's differ."""
    from jaxalign.algorithms import rm

    cfg = tiny_cfg("rm", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=4")
    job = algorithms.build_job(cfg)
    start = jax.tree.map(np.array, jax.device_get(job.params))
    state = init_state(job, cfg.seed)
    state, _ = compile_step(job, state)(state, global_batch(next(job.train_batches), job.mesh), job.frozen)
    tok = common.tokenizer_from(cfg)
    graphdef = nnx.graphdef(rm.build_model(cfg, common.mesh_from(cfg), tok))
    rm.rm_exporter(graphdef, tok)(lora.join_params(job.frozen[0], state.params), tmp_path / "final")
    trained = nnx.merge(graphdef, lora.join_params(job.frozen[0], state.params))
    ids = np.arange(40).reshape(2, 20) % 200 + 3
    again = tiny_cfg("rm", *FAST, *SMALLEST_MODEL, *CONSTANT, "train.batch_size=4",
                     f"model.lora.adapter={tmp_path / 'final' / 'adapter'}")
    started = algorithms.build_job(again)
    model = nnx.merge(nnx.graphdef(rm.build_model(again, common.mesh_from(again), tok)),
                      lora.join_params(started.frozen[0], started.params))
    fresh = nnx.merge(graphdef, lora.join_params(job.frozen[0], start))
    assert np.abs(np.asarray(fresh(ids)) - np.asarray(trained(ids))).max() > 1e-4
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(trained(ids)), atol=1e-6)


@pytest.mark.parametrize("algorithm,over", [
    ("ppo", ["ppo.sampling.max_new_tokens=8", "ppo.critic_warmup_steps=0", "ppo.num_generations=2",
             "ppo.minibatch_size=4"]),
    ("raft", ["raft.sampling.max_new_tokens=8"]),
    ("online-dpo", ["online_dpo.sampling.max_new_tokens=8"]),
])
def test_a_resumed_lora_run_of_ppo_raft_and_online_dpo_is_bit_exact(tmp_path, algorithm, over):
    """Two LoRA iterations, then the run resumed from the step-1 checkpoint: the same adapters
    (PPO: both adapter sets and the value head), optimizer state and extras, bit for bit; the
    checkpoint holds no base weight."""
    ov = [*FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=2", *over, "train.steps=2",
          "train.save_every=1", "train.keep_checkpoints=3"]
    cfg = tiny_cfg(algorithm, *ov)
    job = algorithms.build_job(cfg)
    start = _np(job.params)
    a = run(cfg, job, tmp_path / "a")
    assert any(np.abs(x - y).max() > 0 for x, y in zip(start, _np(a["state"].params)))  # it trained
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(a["state"].params)]
    assert names and all("lora_" in n or "score" in n for n in names), names
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2")
    cfg_b = tiny_cfg(algorithm, *ov)
    b = run(cfg_b, algorithms.build_job(cfg_b), tmp_path / "b")
    for x, y in zip(_np(a["state"]), _np(b["state"]), strict=True):
        np.testing.assert_array_equal(x, y)
