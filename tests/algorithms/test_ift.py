"""IFT algorithm: λ = γ = 0 equals SFT, the loss against an independent numpy computation, the λ
schedule in closed form, the reference-code frozen input embeddings (the default), one λ per step
for any number of micro-batches, and a CLI run that learns."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import ift, sft  # noqa: F401  (registers the sections)
from jaxalign.train.state import TrainState, make_train_step
from tests.algorithms.conftest import SMALL_MODEL, metric_rows, run_cli, tiny_job

SMALL = ["train.steps=4", "train.batch_size=4", "data.eval_fraction=0.0", "mesh.fsdp=1",
         *SMALL_MODEL, "optim.warmup_steps=0"]


def _job(algorithm, overrides):
    return tiny_job(algorithm, *SMALL, *overrides)


def _one_step(cfg, job):
    state = TrainState.create(job.params, job.tx, cfg.seed, job.extras)
    batch = next(job.train_batches)
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule))
    new, metrics = step(state, batch, job.frozen)
    return new, metrics, batch


def test_lambda_zero_gamma_zero_is_the_sft_step():
    # λ = γ = 0 is SFT only when the gold half of the mix keeps its gradient (the option).
    cfg_i, job_i = _job("ift", ["ift.lam=0.0", "ift.gamma=0.0", "ift.train_input_embeddings=true"])
    cfg_s, job_s = _job("sft", ["sft.aggregation=sequence_mean"])
    si, mi, bi = _one_step(cfg_i, job_i)
    ss, ms, bs = _one_step(cfg_s, job_s)
    np.testing.assert_array_equal(bi["input_ids"], bs["input_ids"])
    assert abs(float(mi["loss"]) - float(ms["loss"])) < 1e-6
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), si.params, ss.params)
    assert max(jax.tree.leaves(diffs)) < 1e-6
    # ... and the step did change the parameters (the comparison is not vacuous).
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), si.params, job_i.params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_lambda_changes_the_step():
    cfg_a, job_a = _job("ift", ["ift.lam=0.0", "ift.gamma=0.0"])
    cfg_b, job_b = _job("ift", ["ift.lam=0.5", "ift.gamma=0.0"])
    sa, ma, _ = _one_step(cfg_a, job_a)
    sb, mb, _ = _one_step(cfg_b, job_b)
    assert abs(float(ma["loss"]) - float(mb["loss"])) > 1e-4
    assert float(mb["lambda"]) == pytest.approx(0.5)


def _numpy_logsoftmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_an_independent_computation():
    lam, gamma = 0.3, 0.9
    cfg, job = _job("ift", [f"ift.lam={lam}", f"ift.gamma={gamma}"])
    batch = next(job.train_batches)
    graphdef, params = _split(cfg, job)
    loss_fn = ift.make_loss(graphdef, cfg.algo, job.total_steps, train=False)
    loss, (w, metrics, _) = jax.jit(loss_fn)(job.params, batch, None, None, ift.initial_extras())

    model = nnx.merge(graphdef, params)
    ids, attn, comp = (np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "completion_mask"))
    logits1 = np.asarray(model(jnp.asarray(ids), jnp.asarray(attn)))
    pred = ids.copy()
    for b in range(ids.shape[0]):
        for i in range(1, ids.shape[1]):
            if comp[b, i]:
                pred[b, i] = int(np.argmax(logits1[b, i - 1]))
    table = np.asarray(model.embed(jnp.arange(model.config.vocab_size)[None]))[0]
    e = (1 - lam) * table[ids] + lam * table[pred]
    logits2 = np.asarray(model(attention_mask=jnp.asarray(attn), inputs_embeds=jnp.asarray(e, jnp.float32)))
    lp = _numpy_logsoftmax(logits2.astype(np.float64))
    per_seq = []
    for b in range(ids.shape[0]):
        pos = [i for i in range(1, ids.shape[1]) if comp[b, i]]
        ell = np.array([-lp[b, i - 1, ids[b, i]] for i in pos])
        L = len(ell)
        c = np.array([sum(gamma ** (k - t) * ell[k] for k in range(t, L)) / L for t in range(L)])
        wt = L * c / c.sum()
        per_seq.append(float((wt * ell).sum() / L))
    assert float(w) == len(per_seq)
    np.testing.assert_allclose(float(loss), np.mean(per_seq), rtol=2e-5)


def _split(cfg, job):
    """(graphdef, the job's params): the graph of a model built from the same config."""
    from jaxalign.algorithms import common

    model = common.model_from(cfg, job.mesh, common.tokenizer_from(cfg))
    return nnx.graphdef(model), job.params


def test_lambda_schedule_closed_form():
    algo = ift.Config(lam=0.4, lam_schedule="linear", lam_start=0.1, lam_warmup_steps=10)
    for step, want in ((0, 0.1), (5, 0.25), (10, 0.4), (20, 0.4)):
        assert float(ift.lam_at(algo, step, 100)) == pytest.approx(want, abs=1e-7)
    # Default span: the learning-rate warm-up (the reference code's ``linear_warmup``), then held.
    algo = ift.Config(lam=0.3, lam_schedule="linear", lam_start=0.1)
    for step, want in ((0, 0.1), (2, 0.2), (4, 0.3), (50, 0.3)):
        assert float(ift.lam_at(algo, step, 4)) == pytest.approx(want, abs=1e-7)
    assert float(ift.lam_at(algo, 0, 0)) == pytest.approx(0.3)  # no warm-up: λ from the start
    algo = ift.Config(lam=0.2, lam_noise=0.5)
    key = jax.random.key(3)
    z = float(jax.random.normal(key, (), jnp.float32))
    assert float(ift.lam_at(algo, 0, 10, key)) == pytest.approx(np.clip(0.2 * (1 + 0.5 * z), 0, 1), rel=1e-6)


def test_frozen_input_embeddings_by_default():
    """Reference-code mode, the default: with an untied table the input embedding gets exactly
    no gradient; the ``train_input_embeddings: true`` option gives it one."""
    cfg, job = _job("ift", ["model.config.tie_word_embeddings=false"])
    assert cfg.algo.train_input_embeddings is False
    batch = next(job.train_batches)
    grads = jax.jit(jax.grad(lambda p: job.loss_fn(p, batch, None, jax.random.key(0),
                                           ift.initial_extras())[0]))(job.params)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(grads)}
    embed = [v for k, v in flat.items() if "embed" in k]
    assert embed and all(float(jnp.max(jnp.abs(v[...] if hasattr(v, "__getitem__") else v))) == 0.0 for v in embed)
    cfg2, job2 = _job("ift", ["model.config.tie_word_embeddings=false", "ift.train_input_embeddings=true"])
    grads2 = jax.jit(jax.grad(lambda p: job2.loss_fn(p, batch, None, jax.random.key(0),
                                             ift.initial_extras())[0]))(job2.params)
    flat2 = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(grads2)}
    assert max(float(jnp.max(jnp.abs(v[...]))) for k, v in flat2.items() if "embed" in k) > 0


def test_one_lambda_per_step_whatever_the_micro_batches():
    """With 1, 2 or 4 micro-batches a step uses one λ (the jitter drawn once per step), the
    counter advances once per step, and the step's loss and update are the same."""
    results = []
    for micro in (4, 2, 1):
        cfg, job = _job("ift", ["ift.lam_noise=0.5", "ift.gamma=0.0", f"train.micro_batch_size={micro}"])
        state = TrainState.create(job.params, job.tx, cfg.seed, job.extras)
        step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule))
        lams = []
        for _ in range(2):
            state, metrics = step(state, next(job.train_batches), job.frozen)
            lams.append(float(metrics["lambda"]))
        assert int(state.extras["ift_step"]) == 2 and int(state.extras["ift_micro"]) == 0
        results.append((lams, float(metrics["loss"]), state.params))
    (lams4, loss4, p4), (lams2, loss2, p2), (lams1, loss1, p1) = results
    # The metric is the weighted mean of the micro-batches' λ: one value iff one draw per step.
    np.testing.assert_allclose(lams4, lams1, rtol=1e-6)
    np.testing.assert_allclose(lams2, lams1, rtol=1e-6)
    assert lams1[0] != pytest.approx(lams1[1])  # the jitter is on and differs between steps
    z = [float(jax.random.normal(jax.random.fold_in(jax.random.key(cfg.seed), s), (), jnp.float32))
         for s in (0, 1)]
    np.testing.assert_allclose(lams1, np.clip([0.2 * (1 + 0.5 * zi) for zi in z], 0, 1), rtol=1e-6)
    assert loss4 == pytest.approx(loss1, rel=1e-5) and loss2 == pytest.approx(loss1, rel=1e-5)
    for p in (p4, p2):
        diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p, p1)
        assert max(jax.tree.leaves(diff)) < 1e-5


def test_tiny_config_learns_through_the_cli(tmp_path, capsys):
    rc = run_cli("ift", tmp_path / "run", "train.steps=30", "train.eval_every=0", "data.eval_fraction=0.0")
    assert rc == 0
    rows = metric_rows(tmp_path / "run")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.75 * losses[0]
    assert all(r["lambda"] == pytest.approx(0.2) for r in rows if "lambda" in r)
    assert (tmp_path / "run" / "final" / "config.json").exists()
