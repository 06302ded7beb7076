"""jaxalign.algorithms.dpo: config checks, the loss against an independent computation (TRL's
formulas in numpy on separate per-sequence forwards), every loss type through build_job, the
precomputed reference against the frozen model, BCO state across a resume, and the tiny config
end to end through the CLI with an independent train-set accuracy check."""

from __future__ import annotations

import gc
import math
import shutil
import weakref
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import common, data_setup, dpo
from jaxalign.config import load_config
from jaxalign.data import collate
from jaxalign.errors import JaxalignError
from jaxalign.losses.dpo import LOSS_TYPES
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model
from jaxalign.train.loop import run
from jaxalign.train.metrics import read_metrics
from jaxalign.train.state import TrainState, make_train_step
from tests.algorithms.conftest import SMALLEST_MODEL, run_cli, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]
FAST = ["quiet=true", "train.plots=false", "train.save_final=false"]
# A smaller model for the tests that compile several train steps.
SMALL = SMALLEST_MODEL
LOG2 = math.log(2.0)


def cfg_of(*overrides):
    return tiny_cfg("dpo", *FAST, *overrides)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def seq_logp(model, ids, completion_mask, length: int = 64) -> float:
    """Σ over completion tokens of log p(token | prefix), from a forward of this one sequence
    (right-padded to ``length`` so that one compiled forward serves every sequence; causal
    attention makes the padding irrelevant), log-softmax in float64 numpy."""
    from jaxalign.api import forward_logits

    n = len(ids)
    x = np.zeros((1, length), np.int32)
    x[0, :n] = ids
    mask = (np.arange(length) < n).astype(np.int32)[None]
    logits = np.asarray(forward_logits(model, x, mask)[0, :n], np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float(sum(logp[t - 1, ids[t]] for t in range(1, n) if completion_mask[t]))


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, key", [
    (["dpo.loss_type=simpo", "dpo.reference=precomputed"], "dpo.reference"),
    (["dpo.loss_type=simpo", "dpo.reference_path=/nowhere"], "dpo.reference_path"),
    (["dpo.reference_free=true", "dpo.reference_path=/nowhere"], "dpo.reference_path"),
    (["dpo.loss_type=[sigmoid, ipo]", "dpo.loss_weights=[1.0]"], "dpo.loss_weights"),
    (["dpo.loss_weights=[1.0, 2.0]"], "dpo.loss_weights"),
    (["dpo.loss_type=dpo"], "dpo.loss_type"),
    (["dpo.loss_type=[]"], "dpo.loss_type"),
    (["dpo.reference=frozen"], "dpo.reference"),
    (["dpo.beta=0"], "dpo.beta"),
    (["dpo.label_smoothing=0.5"], "dpo.label_smoothing"),
    (["dpo.rpo_alpha=-1"], "dpo.rpo_alpha"),
    (["dpo.chunk_size=0"], "dpo.chunk_size"),
    (["dpo.betta=0.1"], "dpo.betta"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(JaxalignError, match=f"'{key}'"):
        cfg_of(*overrides)


def test_reference_choice():
    assert cfg_of().algo.reference_mode() == "model"
    assert cfg_of("dpo.reference=precomputed").algo.reference_mode() == "precomputed"
    assert cfg_of("dpo.loss_type=simpo").algo.reference_mode() is None
    assert cfg_of("dpo.reference_free=true").algo.reference_mode() is None
    mix = cfg_of("dpo.loss_type=[simpo, sigmoid]", "dpo.loss_weights=[1, 0.5]").algo
    assert mix.reference_mode() == "model" and dpo.loss_kwargs(mix)["loss_weights"] == (1.0, 0.5)
    smol = load_config(str(ROOT / "configs" / "dpo_smollm2.yaml"), algorithm="dpo")
    assert smol.model.path == "smollm2-135m-instruct" and smol.algo.reference_mode() == "model"


def test_collate_carries_per_example_floats():
    ex = {"prompt_ids": np.array([5], np.int32), "chosen_ids": np.array([5, 6], np.int32),
          "chosen_mask": np.array([0, 1], np.int32), "rejected_ids": np.array([5, 7, 8], np.int32),
          "rejected_mask": np.array([0, 1, 1], np.int32), "row": 0}
    exs = [dict(ex, ref_chosen_logp=-1.5, ref_rejected_logp=np.float32(-2.25)),
           dict(ex, ref_chosen_logp=-3.0, ref_rejected_logp=np.float32(-4.0), row=1)]
    b = collate(exs, pad_id=0)
    assert b["ref_chosen_logp"].dtype == np.float32 and b["ref_chosen_logp"].tolist() == [-1.5, -3.0]
    assert b["ref_rejected_logp"].tolist() == [-2.25, -4.0] and "row" not in b
    with pytest.raises(JaxalignError, match="ref_chosen_logp"):
        collate([exs[0], ex], pad_id=0)


# -------------------------------------------------------------- loss vs an independent computation

V, PAD, EOS = 48, 3, 2
PAIRS = [  # (prompt, chosen completion, rejected completion), different lengths
    ([5, 6, 7], [8, 9, EOS], [10, EOS]),
    ([5], [11, 12, 13, 14, EOS], [15, 16, 17, EOS]),
    ([20, 21, 22, 23], [24, EOS], [25, 26, 27, 28, EOS]),
]


def _scaled_model(seed: int, scale: float):
    mc = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    graphdef, state = nnx.split(init_model(mc, seed))
    # Larger weights than the 0.02 init, so policy and reference log-probs differ by O(1).
    return graphdef, jax.tree.map(lambda x: x * scale, state)


def _hand_batch(s: int = 12):
    out = {f"{side}_{k}": np.zeros((len(PAIRS), s), np.int32)
           for side in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "completion_mask")}
    for side in ("chosen", "rejected"):
        out[f"{side}_input_ids"][:] = PAD
    for i, (p, c, r) in enumerate(PAIRS):
        for side, comp in (("chosen", c), ("rejected", r)):
            n = len(p) + len(comp)
            out[f"{side}_input_ids"][i, :n] = p + comp
            out[f"{side}_attention_mask"][i, :n] = 1
            out[f"{side}_completion_mask"][i, len(p):n] = 1
    return out


@pytest.fixture(scope="module")
def hand_setup():
    g, policy = _scaled_model(0, 8.0)
    g_ref, ref = _scaled_model(1, 8.0)
    pm, rm = nnx.merge(g, policy), nnx.merge(g_ref, ref)
    logps = {}
    for name, model in (("policy", pm), ("ref", rm)):
        for side, k in (("chosen", 1), ("rejected", 2)):
            logps[name, side] = np.array([seq_logp(model, pr[0] + pr[k], [0] * len(pr[0]) + [1] * len(pr[k]),
                                                   length=16) for pr in PAIRS])
    return g, policy, g_ref, ref, logps


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_loss_matches_trl_formula_on_separate_forwards(hand_setup, loss_type, label_smoothing):
    g, policy, g_ref, ref, lp = hand_setup
    beta = 0.5
    pc, pr, rc, rr = lp["policy", "chosen"], lp["policy", "rejected"], lp["ref", "chosen"], lp["ref", "rejected"]
    assert np.min(np.abs((pc - rc) - (pr - rr))) > 0.05  # a test that can tell chosen from rejected
    # TRL DPOTrainer: logits = (π_c − π_r) − (ref_c − ref_r); IPO on per-token averages.
    if loss_type == "sigmoid":
        z = beta * ((pc - pr) - (rc - rr))
        want = np.mean(-log_sigmoid(z) * (1 - label_smoothing) - log_sigmoid(-z) * label_smoothing)
    else:
        lc = np.array([len(c) for _, c, _ in PAIRS], float)
        lr = np.array([len(r) for _, _, r in PAIRS], float)
        want = np.mean(((pc / lc - pr / lr) - (rc / lc - rr / lr) - 1 / (2 * beta)) ** 2)
    cfg = cfg_of(f"dpo.beta={beta}", f"dpo.loss_type={loss_type}", f"dpo.label_smoothing={label_smoothing}")
    batch = _hand_batch()
    key = jax.random.key(0)

    loss_fn = dpo.make_loss(g, cfg.algo, g_ref)
    loss, (w, m, extras) = loss_fn(policy, batch, ref, key, {})
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    assert float(w) == len(PAIRS) and extras == {}
    np.testing.assert_allclose(float(m["rewards/chosen"]), np.mean(beta * (pc - rc)), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(float(m["rewards/rejected"]), np.mean(beta * (pr - rr)), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), np.mean((pc - rc) > (pr - rr)))
    np.testing.assert_allclose(float(m["rewards/margins"]), np.mean(beta * ((pc - rc) - (pr - rr))), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(float(m["logps/chosen"]), np.mean(pc), rtol=1e-5)

    # The same loss from reference log-probs carried in the batch (reference: precomputed).
    pre = dict(batch, ref_chosen_logp=rc.astype(np.float32), ref_rejected_logp=rr.astype(np.float32))
    loss_pre, _ = loss_fn(policy, pre, None, key, {})
    np.testing.assert_allclose(float(loss_pre), want, rtol=2e-5)


def test_reference_free_matches_trl_formula(hand_setup):
    g, policy, _, _, lp = hand_setup
    beta = 0.5
    cfg = cfg_of(f"dpo.beta={beta}", "dpo.reference_free=true")
    loss, _ = dpo.make_loss(g, cfg.algo)(policy, _hand_batch(), None, jax.random.key(0), {})
    want = np.mean(-log_sigmoid(beta * (lp["policy", "chosen"] - lp["policy", "rejected"])))
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)


# ------------------------------------------------------------- every loss type, one train step

BETA = 0.1
EXO = -LOG2 - 0.5 * math.log(1 - 1e-3) - 0.5 * math.log(1e-3)
# Loss at the first step, where the policy equals the reference (c = r = 0).
AT_START = {"sigmoid": LOG2, "hinge": 1.0, "ipo": (1 / (2 * BETA)) ** 2, "robust": LOG2, "exo_pair": EXO,
            "nca_pair": 2 * LOG2, "bco_pair": 2 * LOG2, "sppo_hard": 2 * (1 / (2 * BETA)) ** 2, "aot": LOG2,
            "aot_pair": LOG2, "apo_zero": 1.0, "apo_down": 1.0, "discopop": 0.5 * LOG2 + 0.5,
            "sigmoid_norm": LOG2}
CASES = {t: [f"dpo.loss_type={t}"] for t in LOSS_TYPES}
CASES["mix+rpo"] = ["dpo.loss_type=[sigmoid, ipo]", "dpo.loss_weights=[1.0, 0.01]", "dpo.rpo_alpha=0.5"]
CASES["smoothed"] = ["dpo.loss_type=[robust, exo_pair, aot]", "dpo.label_smoothing=0.1"]
CASES["reference_free"] = ["dpo.reference_free=true"]
# robust with ε: [−(1−ε)·log σ(0) + ε·log σ(0)]/(1−2ε) = log 2; exo with ε = 0.1: −log 2 − ½log 0.9 − ½log 0.1
AT_START["smoothed"] = LOG2 + (-LOG2 - 0.5 * math.log(0.9) - 0.5 * math.log(0.1)) + LOG2


@pytest.fixture(scope="module")
def one_step_each():
    """build_job for every case (tokenized data and the initial model are built once and
    shared), then one train step of every case in a single jit: the identical policy and
    reference forwards are compiled once."""
    cache = {}

    def memo(name, fn):
        def wrapped(*a, **k):
            if name not in cache:
                cache[name] = fn(*a, **k)
            return cache[name]
        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((common, "tokenizer_from"), (data_setup, "datasets_from"), (common, "model_from")):
            mp.setattr(module, name, memo(name, getattr(module, name)))
        jobs = {name: dpo.build_job(cfg_of(*SMALL, "train.batch_size=4", *ov)) for name, ov in CASES.items()}
    dev = jax.devices()[0]
    first = jobs["sigmoid"]
    params = jax.device_put(first.params, dev)
    frozen = jax.device_put(first.frozen, dev)
    batch = next(first.train_batches)

    @jax.jit
    def steps(params, frozen, batch):
        out = {}
        for name, job in jobs.items():
            state = TrainState.create(params, job.tx, 0, job.extras)
            new, metrics = make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule)(
                state, batch, None if job.frozen is None else frozen)
            out[name] = (metrics, new.extras)
        return out

    return jobs, jax.device_get(steps(params, frozen, batch)), batch


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_type_runs_one_step(one_step_each, case):
    jobs, results, batch = one_step_each
    metrics, extras = results[case]
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]) and metrics["skipped"] == 0
    assert metrics["grad_norm"] > 0
    if case in AT_START:
        np.testing.assert_allclose(metrics["loss"], AT_START[case], rtol=1e-4)
    if case in ("simpo", "sft", "reference_free"):
        assert jobs[case].frozen is None
    else:
        assert jobs[case].frozen is not None
    if case == "bco_pair":
        assert set(extras) == {"bco_mean", "bco_count"}
        assert float(extras["bco_count"]) == 2 * batch["chosen_input_ids"].shape[0]
    else:
        assert extras == {}


# ------------------------------------------------------------ precomputed reference == frozen model


def _train(job, n: int):
    """``n`` steps of the shared train step on one device; (state, losses)."""
    dev = jax.devices()[0]
    state = jax.device_put(TrainState.create(job.params, job.tx, 0, job.extras), dev)
    frozen = None if job.frozen is None else jax.device_put(job.frozen, dev)
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule))
    losses = []
    for _ in range(n):
        state, m = step(state, next(job.train_batches), frozen)
        losses.append(float(m["loss"]))
    return state, losses


def test_precomputed_reference_gives_the_same_steps_as_the_model():
    ov = [*SMALL, "train.batch_size=8", "optim.lr=1e-2", "optim.schedule=constant", "optim.warmup_steps=0"]
    a = dpo.build_job(cfg_of(*ov))
    b = dpo.build_job(cfg_of(*ov, "dpo.reference=precomputed"))
    assert a.frozen is not None and b.frozen is None  # no reference model in the precomputed job
    assert all(set(dpo.REF_KEYS) <= set(e) for e in b.train_batches.examples)
    sa, la = _train(a, 3)
    sb, lb = _train(b, 3)
    assert abs(la[0] - LOG2) < 1e-4 and la[2] < la[0] - 0.05  # starts at log 2, then learns
    np.testing.assert_allclose(lb, la, rtol=1e-4)
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-4)


def test_reference_path_model_and_precomputed_drops_it(tmp_path, monkeypatch):
    """A reference from disk: ``model`` keeps it as the frozen input; ``precomputed`` scores the
    data with it and keeps nothing (every reference array is garbage once build_job returns)."""
    from jaxalign.api import load_model, save_model

    base = cfg_of(*SMALL, "seed=7")
    ref_model = common.model_from(base, common.mesh_from(base), common.tokenizer_from(base))
    save_model(ref_model, tmp_path / "ref")
    del ref_model

    alive = []
    real = dpo._reference_model

    def tracked(*a, **k):
        m = real(*a, **k)
        alive.extend(weakref.ref(x) for x in jax.tree.leaves(nnx.state(m)))
        return m

    monkeypatch.setattr(dpo, "_reference_model", tracked)
    ov = [*SMALL, "train.batch_size=8", f"dpo.reference_path={tmp_path / 'ref'}"]

    job = dpo.build_job(cfg_of(*ov, "dpo.reference=precomputed"))
    gc.collect()
    assert alive and all(r() is None for r in alive), "reference arrays outlived build_job"
    assert job.frozen is None
    # The carried log-probs are the disk model's, not the policy's: check one pair independently.
    ex = job.train_batches.examples[0]
    disk = load_model(tmp_path / "ref")
    np.testing.assert_allclose(ex["ref_chosen_logp"], seq_logp(disk, ex["chosen_ids"], ex["chosen_mask"]),
                               rtol=1e-4)
    np.testing.assert_allclose(ex["ref_rejected_logp"],
                               seq_logp(disk, ex["rejected_ids"], ex["rejected_mask"]), rtol=1e-4)

    job = dpo.build_job(cfg_of(*ov, "dpo.reference=model"))
    want = jax.tree.leaves(nnx.state(disk))
    got = jax.tree.leaves(job.frozen)
    assert len(got) == len(want) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(got, want))

    with pytest.raises(JaxalignError, match="'dpo.reference_path'.*vocabulary of 260 tokens, the policy 264"):
        dpo.build_job(cfg_of(*ov, "model.config.vocab_size=264"))
    with pytest.raises(JaxalignError, match="'dpo.reference_path'"):
        dpo.build_job(cfg_of(*SMALL, "dpo.reference=precomputed", f"dpo.reference_path={tmp_path / 'missing'}"))


# ------------------------------------------------------------------ BCO running state + resume


def test_bco_state_lives_in_extras_and_survives_resume(tmp_path):
    # Through the real loop on the full mesh, with precomputed reference log-probs in the batches
    # (train and eval) and a final eval, which must not touch the running state.
    ov = [*SMALL, "dpo.loss_type=bco_pair", "dpo.reference=precomputed", "data.eval_fraction=0.125",
          "train.steps=4", "train.save_every=2", "train.keep_checkpoints=3", "train.batch_size=8",
          "train.log_every=1", "optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0"]
    cfg = cfg_of(*ov)
    job = dpo.build_job(cfg)
    assert set(job.extras) == {"bco_mean", "bco_count"}
    assert job.frozen is None and job.eval_batches is not None
    a = run(cfg, job, tmp_path / "a")
    assert np.isfinite(a["metrics"]["eval/loss"])
    # The same run interrupted after step 2: its last checkpoint removed, then resumed.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    cfg_b = cfg_of(*ov)
    b = run(cfg_b, dpo.build_job(cfg_b), tmp_path / "b")
    for out, d in ((a, "a"), (b, "b")):
        extras = jax.device_get(out["state"].extras)
        # Every step merges its 8 chosen and 8 rejected rewards: 4 steps, 64 rewards, none lost.
        assert float(extras["bco_count"]) == 4 * 2 * 8
        # δ is the mean of every implicit reward seen, i.e. of the logged per-step means.
        rows = [r for r in read_metrics(tmp_path / d / "metrics.jsonl") if "rewards/chosen" in r]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        delta = np.mean([(r["rewards/chosen"] + r["rewards/rejected"]) / 2 for r in rows])
        np.testing.assert_allclose(float(extras["bco_mean"]), delta, rtol=1e-4, atol=1e-6)
        assert abs(delta) > 1e-3
    ea, eb = jax.device_get(a["state"].extras), jax.device_get(b["state"].extras)
    np.testing.assert_allclose(float(eb["bco_mean"]), float(ea["bco_mean"]), rtol=1e-5)


def test_bco_state_is_the_same_for_any_number_of_micro_batches():
    """The running mean takes in every micro-batch of the step (it took in only the last one:
    bco_count 16/8/4 for 1/2/4 micro-batches), and equals the closed form over all 16 rewards."""
    ov = [*SMALL, "dpo.loss_type=bco_pair", "dpo.reference=precomputed", "train.batch_size=8",
          "optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0"]
    out = {}
    for micro in (8, 4, 2):
        job = dpo.build_job(cfg_of(*ov, f"train.micro_batch_size={micro}"))
        assert job.n_micro == 8 // micro
        batch = dict(next(job.train_batches))
        # Shift the precomputed reference so the implicit rewards are not all 0 at step 0
        # (policy = reference), and differ from row to row.
        for k, sign in zip(dpo.REF_KEYS, (1.0, 0.5)):
            batch[k] = batch[k] + sign * (0.5 + 0.25 * jnp.arange(batch[k].shape[0], dtype=batch[k].dtype))
        state = TrainState.create(job.params, job.tx, 0, job.extras)
        step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule))
        new, metrics = step(state, batch, job.frozen)
        out[micro] = (jax.device_get(new.extras), metrics, batch, job)
    extras, metrics, batch, job = out[8]
    # Closed form: δ = mean of β·(logπ − logπ_ref) over the 8 chosen and 8 rejected completions.
    from jaxalign.algorithms.dpo import pair_logps

    job_cfg = cfg_of(*ov)
    model = nnx.merge(nnx.graphdef(common.model_from(job_cfg, job.mesh, common.tokenizer_from(job_cfg))),
                      job.params)
    pw, pl, _, _ = pair_logps(model, batch)
    beta = job_cfg.algo.beta
    want = np.mean(np.concatenate([beta * (np.asarray(pw) - np.asarray(batch[dpo.REF_KEYS[0]])),
                                   beta * (np.asarray(pl) - np.asarray(batch[dpo.REF_KEYS[1]]))]))
    for micro, (e, m, b, _) in out.items():
        np.testing.assert_array_equal(b["chosen_input_ids"], batch["chosen_input_ids"])
        assert float(e["bco_count"]) == 16, micro
        np.testing.assert_allclose(float(e["bco_mean"]), want, rtol=1e-4, atol=1e-7)
    assert abs(want) > 1e-4


# ------------------------------------------------------------------------ CLI, end to end


def test_cli_tiny_config_learns_the_preferences(tmp_path, capsys):
    rc = run_cli("dpo", tmp_path, "train.plots=false", "train.log_every=1")
    assert rc == 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert abs(rows[0]["loss"] - LOG2) < 1e-4  # policy == reference at the start: log 2
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]

    # Independent check on the whole train set: the exported model against a fresh copy of the
    # starting weights (the reference), implicit rewards from one padded forward each.
    from jaxalign.api import forward_logits, load_model

    cfg = load_config(tmp_path / "config.yaml", algorithm="dpo")
    tok = common.tokenizer_from(cfg)
    train, _ = data_setup.datasets_from(cfg, tok, ("preference",))
    start = common.model_from(cfg, common.mesh_from(cfg), tok)
    final = load_model(tmp_path / "final")
    seqs = [(e[f"{s}_ids"], e[f"{s}_mask"]) for e in train for s in ("chosen", "rejected")]
    s = max(len(x) for x, _ in seqs)
    ids = np.full((len(seqs), s), tok.pad_token_id, np.int32)
    attn, comp = np.zeros_like(ids), np.zeros_like(ids)
    for i, (x, m) in enumerate(seqs):
        ids[i, :len(x)], attn[i, :len(x)], comp[i, :len(x)] = x, 1, m

    def logps(model):
        logits = np.asarray(forward_logits(model, ids, attn), np.float64)
        lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        tok_lp = np.take_along_axis(lp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
        return np.sum(np.where(comp[:, 1:] == 1, tok_lp, 0.0), axis=1)

    reward = logps(final) - logps(start)
    acc = np.mean(reward[0::2] > reward[1::2])
    assert acc >= 0.9, acc
