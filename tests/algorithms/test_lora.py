"""jaxalign.algorithms.lora (``model.lora``): an SFT step changes only the adapters (the frozen
base stays bit-identical, the optimizer holds adapter moments only); LoRA DPO lowers its loss and
its reference is the base model (log-probs of an independently built base, no copy of the
weights); the export is the merged model plus a PEFT adapter equal to the trained model; a
resumed LoRA run is bit-exact; unsupported algorithms are refused by key."""

from __future__ import annotations

import json
import shutil

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign import algorithms
from jaxalign.algorithms import common, dpo, lora as lora_algo
from jaxalign.errors import JaxalignError
from jaxalign.models import lora
from jaxalign.parallel import shard_model
from jaxalign.parallel.batch import global_batch
from jaxalign.train.compile import compile_step, init_state
from jaxalign.train.loop import run
from tests.algorithms.conftest import SMALLEST_MODEL, tiny_cfg

FAST = ["quiet=true", "train.plots=false", "train.save_final=false"]
LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
CONSTANT = ["optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0"]


def _model(cfg):
    """The run's model as ``build_job`` makes it (the same seed: the same random init)."""
    return common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg))


def _np(tree):
    return [np.array(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_an_sft_step_changes_only_the_adapters():
    cfg = tiny_cfg("sft", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=4")
    job = algorithms.build_job(cfg)
    base, inner = job.frozen
    assert inner is None
    # Trainable = adapters only: 7 targets x (A, B); the optimizer has moments for them alone.
    assert len(jax.tree.leaves(job.params)) == 14
    assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(job.params))
    state = init_state(job, cfg.seed)
    n_param = sum(x.size for x in jax.tree.leaves(state.params))
    assert sum(x.size for x in jax.tree.leaves(state.opt_state)) <= 2 * n_param + 8
    base_before, adapters_before = _np(base), _np(state.params)
    batch = next(job.train_batches)
    state, metrics = compile_step(job, state)(state, global_batch(batch, job.mesh), job.frozen)
    assert np.isfinite(float(metrics["loss"]))
    for before, after in zip(base_before, _np(base)):
        np.testing.assert_array_equal(after, before)
    changed = [not np.array_equal(a, b) for a, b in zip(adapters_before, _np(state.params))]
    # B starts at 0 so only B gets a gradient at step 1 (dL/dA = B^T ... = 0): every B moves.
    assert sum(changed) == 7


def test_lora_dpo_lowers_the_loss_and_its_reference_is_the_base(tmp_path):
    ov = [*FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.steps=6", "train.batch_size=8", "train.log_every=1"]
    cfg = tiny_cfg("dpo", *ov)
    job = algorithms.build_job(cfg)
    base, reference = job.frozen
    # The reference is the base itself (passed once, adapters off), not a copy.
    assert reference is None and job.lora.ref_is_base
    assert "no copy" in lora_algo.plan_note(job)
    out = run(cfg, job, tmp_path / "run")
    rows = [r for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    losses = [float(json.loads(r)["loss"]) for r in rows]
    assert losses[0] == pytest.approx(np.log(2), abs=1e-5)  # policy = reference at step 1
    assert losses[-1] < losses[0] - 1e-3
    # Rewards = beta * (policy - reference) log-probs, the reference from a base model built
    # independently (the same random init without model.lora).
    plain_cfg = tiny_cfg("dpo", *ov)
    plain_cfg.model.lora = None
    ref_model = _model(plain_cfg)
    graphdef = nnx.graphdef(_model(cfg))
    policy = nnx.merge(graphdef, lora.join_params(base, out["state"].params))
    batch = {k: np.asarray(v) for k, v in next(job.train_batches).items()}
    pw, pl, _, _ = dpo.pair_logps(policy, batch)
    rw, rl, _, _ = dpo.pair_logps(ref_model, batch)
    _, (_, m, _) = job.eval_loss_fn(out["state"].params, batch, job.frozen, jax.random.key(0), {})
    beta = cfg.algo.beta
    np.testing.assert_allclose(float(m["rewards/chosen"]), beta * float(np.mean(pw - rw)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m["rewards/rejected"]), beta * float(np.mean(pl - rl)), rtol=1e-4, atol=1e-6)
    assert abs(float(m["rewards/chosen"])) > 1e-4


def test_export_is_the_merged_model_and_the_adapter(tmp_path):
    from jaxalign.api import forward_logits
    from jaxalign.io.load import load_model
    from jaxalign.io.peft import load_peft, read_peft_config
    from jaxalign.config.schema import LoraSpec

    ov = [*SMALLEST_MODEL, *LORA, *CONSTANT, "quiet=true", "train.plots=false", "train.steps=3",
          "train.batch_size=4"]
    cfg = tiny_cfg("sft", *ov)
    job = algorithms.build_job(cfg)
    out = run(cfg, job, tmp_path / "run")
    final = tmp_path / "run" / "final"
    base, _ = job.frozen
    graphdef = nnx.graphdef(_model(cfg))
    trained = nnx.merge(graphdef, lora.join_params(base, out["state"].params))
    ids = np.arange(40).reshape(2, 20) % 200 + 3
    want = np.asarray(forward_logits(trained, ids))
    merged = load_model(final)
    assert not lora.has_lora(merged)
    np.testing.assert_allclose(np.asarray(forward_logits(merged, ids)), want, atol=1e-5)
    pc = read_peft_config(final / "adapter")
    plain_cfg = tiny_cfg("sft", *ov)
    plain_cfg.model.lora = None
    again = _model(plain_cfg)  # the base, built anew
    shard_model(lora.add_lora(again, LoraSpec(rank=pc["r"], alpha=pc["lora_alpha"], targets=pc["target_modules"]),
                              seed=5), common.mesh_from(plain_cfg))
    load_peft(again, final / "adapter")
    np.testing.assert_allclose(np.asarray(forward_logits(again, ids)), want, atol=1e-6)
    # model.lora.adapter: a run that starts from the exported adapter starts from the trained one.
    resumed = algorithms.build_job(tiny_cfg("sft", *ov, f"model.lora.adapter={final / 'adapter'}"))
    for x, y in zip(_np(resumed.params), _np(out["state"].params)):
        np.testing.assert_array_equal(x, y)


def test_a_resumed_lora_run_is_bit_exact(tmp_path):
    ov = [*FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.steps=4", "train.save_every=2",
          "train.keep_checkpoints=3", "train.batch_size=4"]
    cfg = tiny_cfg("sft", *ov)
    a = run(cfg, algorithms.build_job(cfg), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    cfg_b = tiny_cfg("sft", *ov)
    b = run(cfg_b, algorithms.build_job(cfg_b), tmp_path / "b")
    for x, y in zip(_np(a["state"]), _np(b["state"])):
        np.testing.assert_array_equal(x, y)
    # The checkpoint holds the adapters (and their moments), not the base.
    assert len(jax.tree.leaves(a["state"].params)) == 14


def test_every_builtin_algorithm_is_supported():
    from jaxalign.algorithms.registry import BUILTIN

    assert set(BUILTIN) <= set(lora_algo.SUPPORTED)


def test_an_unsupported_setting_is_refused_by_key(tmp_path):
    # PPO's LoRA critic shares the policy's frozen base: a critic from a reward model cannot.
    cfg = tiny_cfg("ppo", *FAST, *LORA, f"ppo.critic_path={tmp_path}", "ppo.critic_init=reward_model")
    with pytest.raises(JaxalignError, match="model.lora"):
        algorithms.build_job(cfg)


def test_the_peft_config_names_the_base_model(tmp_path):
    cfg = tiny_cfg("sft", *FAST, *SMALLEST_MODEL, *LORA)
    model = _model(cfg)
    graphdef, params = nnx.split(model)
    common.lm_exporter(graphdef, None, "org/base-model")(params, tmp_path / "out")
    pc = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert pc["base_model_name_or_path"] == "org/base-model"
