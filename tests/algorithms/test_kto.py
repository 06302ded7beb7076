"""jaxalign.algorithms.kto: config checks, preference pairs split into the tokens an unpaired file
gives, the loss against an independent computation (separate per-sequence forwards of every own
and mismatched pair, TRL's formula in numpy), the mismatched pairs taken over the global batch on
8 devices, a sharded train step equal to the 1-device one, and the tiny config end to end through
the CLI with an independent held-out check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import flax.nnx as nnx
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.algorithms import common, kto
from jaxalign.config import load_config
from jaxalign.data import collate, prepare_dataset, shipped_path, tiny_tokenizer_path, unpair_preference
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model
from jaxalign.parallel import batch_shardings
from jaxalign.train.compile import shardings_of, state_shardings
from jaxalign.train.metrics import read_metrics
from jaxalign.train.state import TrainState, make_train_step
from tests.algorithms.conftest import SMALLEST_MODEL, run_cli, tiny_cfg, tiny_job

FAST = ["quiet=true", "train.plots=false", "train.save_final=false"]


def cfg_of(*overrides):
    return tiny_cfg("kto", *FAST, *overrides)


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, key", [
    (["kto.loss_type=sigmoid"], "kto.loss_type"),
    (["kto.beta=0"], "kto.beta"),
    (["kto.desirable_weight=0"], "kto.desirable_weight"),
    (["kto.undesirable_weight=-1"], "kto.undesirable_weight"),
    (["kto.chunk_size=0"], "kto.chunk_size"),
    (["train.batch_size=1"], "train.batch_size"),
    (["train.batch_size=4", "train.micro_batch_size=1"], "train.micro_batch_size"),
    (["kto.reference=precomputed"], "kto.reference"),
    (["kto.betta=0.1"], "kto.betta"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(JaxalignError, match=f"'{key}'"):
        cfg_of(*overrides)


def test_config_defaults_and_shipped_configs():
    algo = cfg_of().algo
    assert (algo.beta, algo.loss_type, algo.desirable_weight, algo.undesirable_weight) == (0.1, "kto", 1.0, 1.0)
    # APO-zero has no KL reference point, so one row per batch is allowed.
    assert cfg_of("kto.loss_type=apo_zero_unpaired", "train.batch_size=1").algo.loss_type == "apo_zero_unpaired"
    root = Path(__file__).resolve().parents[2]
    smol = load_config(str(root / "configs" / "kto_smollm2.yaml"), algorithm="kto")
    assert smol.model.path == "smollm2-135m-instruct" and smol.train.micro_batch_size >= 2


# ------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()), local_files_only=True)


def _unpaired_rows(pref_rows):
    out = []
    for r in pref_rows:
        out += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    return out


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("max_length", [128, 24])
def test_preference_pairs_split_into_the_tokens_of_unpaired_rows(tmp_path, tok, max_length):
    """Splitting tokenized pairs gives exactly what tokenising the equivalent unpaired file gives
    (plain and chat rows; with max_length=24 prompts and completions are truncated)."""
    chat = [{"prompt": [{"role": "user", "content": "How was it?"}],
             "chosen": [{"role": "assistant", "content": "Lovely, thanks!"}],
             "rejected": [{"role": "assistant", "content": "Dreadful."}]}]
    plain = [json.loads(x) for x in shipped_path("preference_tiny.jsonl").read_text().splitlines()[:5]]
    for name, rows in (("plain", plain), ("chat", chat)):
        pref = _write_jsonl(tmp_path / f"{name}_pref.jsonl", rows)
        unp = _write_jsonl(tmp_path / f"{name}_unp.jsonl", _unpaired_rows(rows))
        kw = dict(max_length=max_length, max_prompt_length=16)
        a, _ = prepare_dataset(pref, tok, **kw)
        b, stats = prepare_dataset(unp, tok, **kw)
        assert stats.format == "unpaired"
        split = unpair_preference(a)
        assert len(split) == len(b) == 2 * len(rows)
        for x, y in zip(split, b):
            assert x["label"] is y["label"]
            np.testing.assert_array_equal(x["prompt_ids"], y["prompt_ids"])
            np.testing.assert_array_equal(x["completion_ids"], y["completion_ids"])
            assert len(x["prompt_ids"]) + len(x["completion_ids"]) <= max_length
        assert [x["row"] for x in split] == [i // 2 for i in range(2 * len(rows))]


def test_data_errors_and_kinds(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": True},
                                                 {"prompt": "p", "completion": "d", "label": "no"}])
    with pytest.raises(JaxalignError) as e:
        kto.build_job(cfg_of(f"data.train={bad}"))
    assert str(e.value) == f"{bad}: row 1 (0-based): field 'label': expected true or false, got str 'no'"
    with pytest.raises(JaxalignError, match="holds 'sft' data, but kto trains on 'unpaired' or 'preference'"):
        kto.build_job(cfg_of("data.train=shipped:sft_tiny.jsonl"))
    with pytest.raises(JaxalignError, match="'data.eval'.*holds 'sft' data"):
        kto.build_job(cfg_of("data.eval=shipped:sft_tiny.jsonl"))


# -------------------------------------------------------------- loss vs an independent computation

V, PAD, EOS = 48, 3, 2
ROWS = [  # (prompt, completion, desirable), different lengths on both sides
    ([5, 6, 7], [8, 9, EOS], True),
    ([5], [11, 12, 13, 14, EOS], False),
    ([20, 21, 22, 23], [24, EOS], True),
    ([30, 31], [32, 33, 34, EOS], False),
    ([40], [41, EOS], True),
    ([6, 7, 8, 9, 10], [12, EOS], True),
    ([15, 16], [17, 18, 19, 20, 21, EOS], False),
    ([25, 26, 27], [28, 29, EOS], False),
]


def _scaled_model(seed: int, scale: float):
    mc = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    graphdef, state = nnx.split(init_model(mc, seed))
    # Larger weights than the 0.02 init, so policy and reference log-probs differ by O(1).
    return graphdef, jax.tree.map(lambda x: x * scale, state)


def seq_logp(model, ids, n_prompt: int, length: int = 16) -> float:
    """Σ over the completion tokens (after ``n_prompt``) of log p(token | prefix), from a forward
    of this one sequence, right-padded, log-softmax in float64 numpy."""
    from jaxalign.api import forward_logits

    n = len(ids)
    x = np.zeros((1, length), np.int32)
    x[0, :n] = ids
    mask = (np.arange(length) < n).astype(np.int32)[None]
    logits = np.asarray(forward_logits(model, x, mask)[0, :n], np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float(sum(logp[t - 1, ids[t]] for t in range(n_prompt, n)))


def _batch():
    exs = [{"prompt_ids": np.asarray(p, np.int32), "completion_ids": np.asarray(c, np.int32), "label": lab,
            "row": i} for i, (p, c, lab) in enumerate(ROWS)]
    return collate(exs, pad_id=PAD)


@pytest.fixture(scope="module")
def hand_setup():
    """Two scaled random models and every row's log-probs under each: own pairs (x_i, y_i) and
    mismatched pairs (x_i, y_{i-1}), row 0 taking the last row's completion (TRL's rotation).
    The policy is the one of the two whose mismatched log-ratios have a positive mean, so the
    KL reference point is not clamped to 0."""
    a, b = _scaled_model(0, 8.0), _scaled_model(1, 8.0)
    lp = {}
    for name, (g, s) in (("a", a), ("b", b)):
        m = nnx.merge(g, s)
        lp[name, "own"] = np.array([seq_logp(m, p + c, len(p)) for p, c, _ in ROWS])
        lp[name, "kl"] = np.array([seq_logp(m, p + ROWS[i - 1][1], len(p)) for i, (p, _, _) in enumerate(ROWS)])
    if np.mean(lp["a", "kl"] - lp["b", "kl"]) < 0:
        a, b = b, a
        lp = {("a" if k[0] == "b" else "b", k[1]): v for k, v in lp.items()}
    return a, b, lp


def trl_formula(lp, beta, wd, wu, loss_type="kto"):
    """TRL 1.16 KTOTrainer._compute_loss, the loss part, in float64 numpy."""
    lab = np.array([d for _, _, d in ROWS])
    kl = max(np.mean(lp["a", "kl"] - lp["b", "kl"]), 0.0) if loss_type == "kto" else 0.0
    r = lp["a", "own"] - lp["b", "own"]
    if loss_type == "kto":
        losses = np.concatenate([wd * (1 - sig(beta * (r[lab] - kl))), wu * (1 - sig(beta * (kl - r[~lab])))])
    else:
        losses = np.concatenate([wd * (1 - sig(beta * r[lab])), wu * sig(beta * r[~lab])])
    return losses.mean(), kl, beta * r[lab].mean(), beta * r[~lab].mean()


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_loss_matches_trl_formula_on_separate_forwards(hand_setup, loss_type):
    (g, policy), (g_ref, ref), lp = hand_setup
    beta, wd, wu = 0.5, 1.3, 0.8
    want, kl, rc, rr = trl_formula(lp, beta, wd, wu, loss_type)
    assert loss_type != "kto" or kl > 0.05  # a reference point the test can see
    cfg = cfg_of(f"kto.beta={beta}", f"kto.desirable_weight={wd}", f"kto.undesirable_weight={wu}",
                 f"kto.loss_type={loss_type}")
    loss, (w, m, extras) = kto.make_loss(g, cfg.algo, g_ref)(policy, _batch(), ref, jax.random.key(0), {})
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    assert float(w) == len(ROWS) and extras == {}
    np.testing.assert_allclose(float(m["kl"]), kl, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["rewards/chosen"]), rc, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["rewards/rejected"]), rr, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["rewards/margins"]), rc - rr, rtol=2e-5, atol=1e-6)


def test_mismatched_pairs_cross_shards_on_8_devices(hand_setup):
    """The batch split over 8 devices (one row each): the loss and z₀ equal the 1-device values,
    which a shift inside each shard (every row paired with itself) would not give."""
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
    (g, policy), (g_ref, ref), lp = hand_setup
    cfg = cfg_of("kto.beta=0.5")
    loss_fn = kto.make_loss(g, cfg.algo, g_ref)
    def f(p, b, r):
        loss, (_, metrics, _) = loss_fn(p, b, r, jax.random.key(0), {})
        return loss, metrics

    f = jax.jit(f)
    batch = _batch()
    one_loss, one_m = f(policy, batch, ref)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert len({s.device for s in sharded["completion_input_ids"].addressable_shards}) == 8
    rep = NamedSharding(mesh, P())
    eight_loss, eight_m = f(jax.device_put(policy, rep), sharded, jax.device_put(ref, rep))
    np.testing.assert_allclose(float(eight_loss), float(one_loss), rtol=1e-5)
    np.testing.assert_allclose(float(eight_m["kl"]), float(one_m["kl"]), rtol=1e-5)
    per_shard_kl = max(np.mean(lp["a", "own"] - lp["b", "own"]), 0.0)
    assert abs(per_shard_kl - float(one_m["kl"])) > 0.05


# ------------------------------------------------------------------------- one sharded step

# No warmup (a zero first step would make the comparison vacuous); a large Adam eps keeps the
# update Lipschitz in the gradient (see tests/algorithms/test_sft.py).
STEP = [*SMALLEST_MODEL, "train.batch_size=8", "optim.warmup_steps=0", "optim.schedule=constant",
        "optim.eps=1e-3"]


def _step(job, batch, frozen):
    state = TrainState.create(job.params, job.tx, 0, job.extras)
    state = jax.device_put(state, state_shardings(state, job.mesh, job.tx))
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule),
                   out_shardings=(shardings_of(state), None))
    new, metrics = step(state, jax.device_put(batch, batch_shardings(batch, job.mesh)), frozen)
    return new, jax.device_get(metrics)


def test_sharded_step_equals_single_device_step():
    """data=8 (one row per device) against one device, with a reference unlike the policy so that
    z₀ > 0: the same loss, z₀ and updated parameters."""
    _, job1 = tiny_job("kto", *FAST, *STEP, "mesh.fsdp=1")
    _, job8 = tiny_job("kto", *FAST, *STEP, "mesh.data=8", "mesh.fsdp=1")
    assert dict(job8.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    b1, b8 = next(job1.train_batches), next(job8.train_batches)
    np.testing.assert_array_equal(b1["completion_input_ids"], b8["completion_input_ids"])
    # A reference with a 20x (tied) embedding is much sharper than the near-uniform random
    # policy, so completions it was not built around are less likely under it: z₀ > 0.

    def reference(job):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x * 20.0 if "embed_tokens" in jax.tree_util.keystr(path) else x, job.frozen)

    s1, m1 = _step(job1, b1, reference(job1))
    assert m1["kl"] > 0.01, m1["kl"]
    s8, m8 = _step(job8, b8, reference(job8))
    for k in ("loss", "kl", "grad_norm", "rewards/chosen"):
        assert m8[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), k
    diff = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))),
                                            jax.device_get(s1.params), jax.device_get(s8.params))))
    assert diff < 1e-5


# ------------------------------------------------------------------------ CLI, end to end


def test_cli_help_and_plan(tmp_path, capsys):
    """`jaxalign kto --help` lists the training options; `jaxalign plan` builds the KTO job and
    compiles its step for the longest batch: prompts and completions each padded to a bucket."""
    from jaxalign.cli import main

    with pytest.raises(SystemExit) as e:
        main(["kto", "--help"])
    assert e.value.code == 0 and "--run-dir" in capsys.readouterr().out
    rc = main(["plan", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "kto_tiny.yaml"),
               "--json", f"run_dir={tmp_path / 'never'}", "data.buckets=[64]", *SMALLEST_MODEL])
    assert rc == 0 and not (tmp_path / "never").exists()
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert est["batch_shapes"] == {"prompt_input_ids": [16, 64], "prompt_attention_mask": [16, 64],
                                   "completion_input_ids": [16, 64], "completion_attention_mask": [16, 64],
                                   "label": [16]}
    assert est["frozen"] > 0  # the reference model


def test_cli_tiny_config_raises_the_held_out_reward_margin(tmp_path):
    """Train on 48 shipped preference pairs (split into 96 rows), evaluate on the other 16 pairs as
    an unpaired file (32 held-out rows): the implicit reward margin between desirable and
    undesirable held-out rows rises from 0, in the run's eval metrics and in an independent
    recomputation from the exported model against a fresh copy of the starting weights."""
    rows = [json.loads(x) for x in shipped_path("preference_tiny.jsonl").read_text().splitlines()]
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:48])
    held = _write_jsonl(tmp_path / "held.jsonl", _unpaired_rows(rows[48:]))
    run = tmp_path / "run"
    # One device: sharding is tested above; 8 device threads' collectives on a busy 2-core CI
    # machine only add waiting (XLA:CPU rendezvous) to a test about learning.
    rc = run_cli("kto", run, f"data.train={train}", f"data.eval={held}", "train.eval_at_start=true",
                 "train.plots=false", "train.log_every=1", "mesh.fsdp=1")
    assert rc == 0
    metrics = read_metrics(run / "metrics.jsonl")
    train_rows = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if "eval/rewards/margins" in r]
    assert abs(train_rows[0]["loss"] - 0.5) < 1e-4  # policy == reference at the start: 1 − σ(0)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["step"] for r in (evals[0], evals[-1])] == [0, 20]
    assert abs(evals[0]["eval/rewards/margins"]) < 1e-5
    assert evals[-1]["eval/rewards/margins"] > 0.05, evals[-1]

    # Independent check: per held-out row, β·(log π − log π_ref) from one padded forward each of
    # the exported model and a fresh copy of the starting weights.
    from jaxalign.api import forward_logits, load_model

    cfg = load_config(run / "config.yaml", algorithm="kto")
    tok = common.tokenizer_from(cfg)
    ev, _ = prepare_dataset(held, tok, max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    start = common.model_from(cfg, common.mesh_from(cfg), tok)
    final = load_model(run / "final")
    s = max(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in ev)
    ids = np.full((len(ev), s), tok.pad_token_id, np.int32)
    attn, comp = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(ev):
        n_p, n = len(e["prompt_ids"]), len(e["prompt_ids"]) + len(e["completion_ids"])
        ids[i, :n] = np.concatenate([e["prompt_ids"], e["completion_ids"]])
        attn[i, :n], comp[i, n_p:n] = 1, 1

    def logps(model):
        logits = np.asarray(forward_logits(model, ids, attn), np.float64)
        lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        tok_lp = np.take_along_axis(lp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
        return np.sum(np.where(comp[:, 1:] == 1, tok_lp, 0.0), axis=1)

    reward = cfg.algo.beta * (logps(final) - logps(start))
    lab = np.array([e["label"] for e in ev])
    margin = reward[lab].mean() - reward[~lab].mean()
    assert margin > 0.05 and math.isclose(margin, evals[-1]["eval/rewards/margins"], rel_tol=0.2), margin
    # Pair by pair (rows 2k and 2k+1 share a prompt): the desirable completion gains more.
    assert np.mean(reward[0::2] > reward[1::2]) >= 0.75
