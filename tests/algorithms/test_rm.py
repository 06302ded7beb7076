"""Reward model: the losses on hand-made batches against numpy, the LM term against a numpy NLL,
gradient accumulation, config errors, CLI runs that learn (pairwise, K-wise, Plackett–Luce
recovering the planted ranking of the shipped data) and the export loaded by transformers."""

from __future__ import annotations

import json
import shutil

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import common, rm
from jaxalign.errors import JaxalignError
from jaxalign.train.loop import run
from jaxalign.train.state import TrainState, make_train_step
from tests.algorithms.conftest import SMALL_MODEL, metric_rows, run_cli, tiny_cfg

SMALL = ["mesh.fsdp=1", *SMALL_MODEL, "train.plots=false"]
RANKED = ["data.train=shipped:ranked_tiny.jsonl"]


def _cfg(overrides=()):
    return tiny_cfg("rm", *SMALL, *overrides)


@pytest.fixture(scope="module")
def tiny():
    """(graphdef, params, vocab) of a tiny reward model whose head is scaled up so that the scores
    are O(1) (a fresh head gives scores near 0, where every loss is close to log 2)."""
    cfg = _cfg()
    model = rm.build_model(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg))
    model.score.weight[...] = model.score.weight[...] * 20.0
    graphdef, params = nnx.split(model)
    return graphdef, params, model.config.vocab_size


def _seqs(rng, n, s, vocab):
    """Right-padded ids/masks with lengths in [s//2, s]; completion = everything after 3 tokens."""
    lengths = rng.integers(s // 2, s + 1, size=n)
    ids = rng.integers(4, vocab, size=(n, s)).astype(np.int32)
    attn = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(attn > 0, ids, 3).astype(np.int32)
    comp = (attn * (np.arange(s)[None] >= 3)).astype(np.int32)
    return ids, attn, comp, lengths


def _np_scores(graphdef, params, ids, attn):
    """Scores read at position length-1 of the per-token values (numpy indexing)."""
    values = np.asarray(nnx.merge(graphdef, params).token_values(jnp.asarray(ids), jnp.asarray(attn)), np.float64)
    last = attn.sum(-1) - 1
    return values[np.arange(len(ids)), last]


def _pref_batch(rng, b, s, vocab, margin=True):
    ci, ca, cc, _ = _seqs(rng, b, s, vocab)
    ri, ra, rc, _ = _seqs(rng, b, s, vocab)
    batch = {"chosen_input_ids": ci, "chosen_attention_mask": ca, "chosen_completion_mask": cc,
             "rejected_input_ids": ri, "rejected_attention_mask": ra, "rejected_completion_mask": rc}
    if margin:
        batch["margin"] = rng.uniform(0.0, 2.0, size=b).astype(np.float32)
    return batch


def _ranked_batch(rng, b, k, s, vocab, valid_counts):
    ids, attn, comp, _ = _seqs(rng, b * k, s, vocab)
    valid = (np.arange(k)[None] < np.asarray(valid_counts)[:, None]).astype(np.int32)
    attn = attn.reshape(b, k, s) * valid[:, :, None]
    ids = np.where(attn > 0, ids.reshape(b, k, s), 3).astype(np.int32)
    comp = comp.reshape(b, k, s) * valid[:, :, None]
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "rank_valid": valid}


def _loss(graphdef, params, batch, **algo):
    fn = jax.jit(rm.make_loss(graphdef, rm.Config(**algo)))
    loss, (w, m, _) = fn(params, jax.tree.map(jnp.asarray, batch), None, jax.random.key(0), {})
    return float(loss), float(w), {k: float(v) for k, v in m.items()}


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


# ---------------------------------------------------------------- losses against numpy


def test_pairwise_loss_with_margin_and_centring_matches_numpy(tiny):
    graphdef, params, vocab = tiny
    batch = _pref_batch(np.random.default_rng(0), 6, 12, vocab)
    c = 0.05
    loss, w, m = _loss(graphdef, params, batch, loss="pairwise", center_coef=c)
    rw = _np_scores(graphdef, params, batch["chosen_input_ids"], batch["chosen_attention_mask"])
    rl = _np_scores(graphdef, params, batch["rejected_input_ids"], batch["rejected_attention_mask"])
    assert np.std(rw - rl) > 0.5  # the scores are spread out: the comparison is not at 0
    mg = batch["margin"].astype(np.float64)
    want = -np.mean(_log_sigmoid(rw - rl - mg)) + c * np.mean((rw + rl) ** 2)
    assert loss == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert w == 6
    assert m["accuracy"] == pytest.approx(np.mean(rw > rl))
    assert m["margin"] == pytest.approx(np.mean(rw - rl), abs=1e-5)
    r = np.concatenate([rw, rl])
    assert m["reward_mean"] == pytest.approx(r.mean(), abs=1e-5)
    assert m["reward_std"] == pytest.approx(r.std(), rel=1e-4)
    # use_margin: false ignores the data's margins
    loss_nm, _, _ = _loss(graphdef, params, batch, loss="pairwise", use_margin=False)
    assert loss_nm == pytest.approx(-np.mean(_log_sigmoid(rw - rl)), rel=1e-5, abs=1e-5)


def _ranked_expectations(graphdef, params, batch):
    b, k, s = batch["input_ids"].shape
    valid = batch["rank_valid"].astype(bool)
    # Padding responses have an all-zero mask: give them a dummy one for the numpy scoring.
    attn = np.where(valid[:, :, None], batch["attention_mask"], 1).reshape(b * k, s)
    r = _np_scores(graphdef, params, batch["input_ids"].reshape(b * k, s), attn).reshape(b, k)
    pl, kw, n = [], [], 0
    for i in range(b):
        x = r[i][valid[i]]
        if len(x) < 2:
            continue
        n += 1
        pl.append(sum(_logsumexp(x[j:]) - x[j] for j in range(len(x) - 1)))
        pairs = [-_log_sigmoid(x[p] - x[q]) for p in range(len(x)) for q in range(p + 1, len(x))]
        kw.append(np.mean(pairs))
    return r, np.mean(pl), np.mean(kw), n


def test_listwise_and_kwise_losses_match_numpy(tiny):
    graphdef, params, vocab = tiny
    # ragged K: 3, 2 and 1 valid responses (the last prompt has no pair and is left out)
    batch = _ranked_batch(np.random.default_rng(1), 4, 3, 12, vocab, [3, 2, 1, 3])
    r, pl, kw, n = _ranked_expectations(graphdef, params, batch)
    assert np.std(r) > 0.5
    loss, w, m = _loss(graphdef, params, batch, loss="listwise")
    assert loss == pytest.approx(pl, rel=1e-5, abs=1e-5)
    assert w == n == 3
    loss, w, m = _loss(graphdef, params, batch, loss="kwise")
    assert loss == pytest.approx(kw, rel=1e-5, abs=1e-5)
    assert w == 3
    pairs = [(i, p, q) for i, c in enumerate([3, 2, 1, 3]) for p in range(c) for q in range(p + 1, c)]
    assert m["accuracy"] == pytest.approx(np.mean([r[i, p] > r[i, q] for i, p, q in pairs]))
    assert m["margin"] == pytest.approx(np.mean([r[i, p] - r[i, q] for i, p, q in pairs]), abs=1e-5)


def test_kwise_and_listwise_on_preference_data_equal_pairwise_without_margin(tiny):
    graphdef, params, vocab = tiny
    batch = _pref_batch(np.random.default_rng(2), 5, 10, vocab, margin=False)
    want, _, _ = _loss(graphdef, params, batch, loss="pairwise")
    for loss_type in ("kwise", "listwise"):
        got, w, m = _loss(graphdef, params, batch, loss=loss_type)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        assert w == 5


def _np_completion_nll(graphdef, params, ids, attn, comp):
    """Per-sequence token-mean NLL of completion tokens from the backbone's logits (numpy)."""
    logits = np.asarray(nnx.merge(graphdef, params).backbone(jnp.asarray(ids), jnp.asarray(attn)), np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    out = []
    for i in range(len(ids)):
        ts = [t for t in range(1, ids.shape[1]) if comp[i, t]]
        out.append(-np.mean([logp[i, t - 1, ids[i, t]] for t in ts]))
    return np.asarray(out)


def test_lm_coef_adds_the_chosen_response_nll(tiny):
    graphdef, params, vocab = tiny
    beta = 0.7
    batch = _pref_batch(np.random.default_rng(3), 4, 12, vocab)
    base, _, _ = _loss(graphdef, params, batch, loss="pairwise")
    with_lm, w, m = _loss(graphdef, params, batch, loss="pairwise", lm_coef=beta)
    nll = _np_completion_nll(graphdef, params, batch["chosen_input_ids"], batch["chosen_attention_mask"],
                             batch["chosen_completion_mask"]).mean()
    assert nll > 1.0
    assert m["nll"] == pytest.approx(nll, rel=1e-5)
    assert with_lm - base == pytest.approx(beta * nll, rel=1e-5)
    assert m["rm_loss"] == pytest.approx(base, rel=1e-6)
    # the LM head only on the chosen completions, in chunks (rm.chunk_size)
    _, _, m = _loss(graphdef, params, batch, loss="pairwise", lm_coef=beta, chunk_size=4)
    assert m["nll"] == pytest.approx(nll, rel=1e-5)
    # ranked: the best (first) response of each prompt with a pair
    batch = _ranked_batch(np.random.default_rng(4), 3, 3, 12, vocab, [3, 1, 2])
    base, _, _ = _loss(graphdef, params, batch, loss="listwise")
    with_lm, _, m = _loss(graphdef, params, batch, loss="listwise", lm_coef=beta, chunk_size=5)
    nll = _np_completion_nll(graphdef, params, batch["input_ids"][:, 0], batch["attention_mask"][:, 0],
                             batch["completion_mask"][:, 0])[[0, 2]].mean()
    assert with_lm - base == pytest.approx(beta * nll, rel=1e-5)


def test_accumulation_equals_one_large_batch(tiny):
    graphdef, params, vocab = tiny
    # micro-batches of 2 prompts: weights 1 and 2 (one prompt without a pair)
    batch = _ranked_batch(np.random.default_rng(5), 4, 3, 12, vocab, [3, 1, 2, 3])
    import optax

    tx = optax.sgd(1.0)
    out = []
    for n_micro in (1, 2):
        fn = rm.make_loss(graphdef, rm.Config(loss="listwise", lm_coef=0.3))
        step = jax.jit(make_train_step(fn, tx, n_micro))
        new, metrics = step(TrainState.create(params, tx, 0), jax.tree.map(jnp.asarray, batch), None)
        out.append((float(metrics["loss"]), new.params))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out[0][1], out[1][1])
    assert max(jax.tree.leaves(diff)) < 1e-5
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out[0][1], params)
    assert max(jax.tree.leaves(moved)) > 1e-4


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides, words", [
    (["rm.loss=ranknet"], "rm.loss"),
    (["rm.loss=kwise", "rm.center_coef=0.01"], "rm.center_coef"),
    (["rm.lm_coef=-1"], "rm.lm_coef"),
    (["rm.chunk_size=0"], "rm.chunk_size"),
    (["data.format=ranked"], "pairwise needs preference data"),
])
def test_config_errors(overrides, words):
    with pytest.raises(JaxalignError, match=words):
        tiny_cfg("rm", *overrides)


def test_pairwise_on_ranked_data_is_a_clear_cli_error(tmp_path, capsys):
    rc = run_cli("rm", tmp_path / "r", *RANKED)
    assert rc == 2
    err = capsys.readouterr().err
    assert "rm.loss" in err and "kwise or listwise" in err and "ranked" in err


# ---------------------------------------------------------------- training runs


def test_pairwise_tiny_config_learns_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    rc = run_cli("rm", run_dir, "train.steps=16", "train.log_every=1", "train.plots=false")
    assert rc == 0
    rows = [r for r in metric_rows(run_dir) if "loss" in r]
    # a fresh head scores everything ~0: the first loss is −log σ(0) = log 2
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=0.05)
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert rows[-1]["accuracy"] >= 0.9
    assert rows[-1]["margin"] > 1.0
    cfg = json.loads((run_dir / "final" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1


def test_kwise_runs_and_lowers_its_loss(tmp_path):
    run_dir = tmp_path / "run"
    rc = run_cli("rm", run_dir, "rm.loss=kwise", "train.steps=12", "train.batch_size=8", "train.log_every=1",
                 "train.save_final=false", *SMALL, *RANKED)
    assert rc == 0
    rows = [r for r in metric_rows(run_dir) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=0.05)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert {"accuracy", "top1_accuracy", "margin", "reward_mean", "reward_std"} <= set(rows[-1])


def _kendall_tau(scores, truth):
    """Mean over prompts of Kendall's tau between scores and true qualities (no ties in truth)."""
    taus = []
    for s, t in zip(scores, truth):
        n = len(t)
        sign = [np.sign(s[i] - s[j]) * np.sign(t[i] - t[j]) for i in range(n) for j in range(i + 1, n)]
        taus.append(np.mean(sign))
    return float(np.mean(taus))


def test_listwise_recovers_the_planted_ranking_on_held_out_prompts(tmp_path):
    cfg = _cfg(RANKED + ["rm.loss=listwise", "data.eval_fraction=0.25", "train.steps=14",
                         "train.batch_size=8", "train.save_final=false"])
    job = rm.build_job(cfg)
    tok = common.tokenizer_from(cfg)
    graphdef, _ = nnx.split(rm.build_model(cfg, common.mesh_from(cfg), tok))

    def held_out(params):
        scores, truth = [], []
        for b in job.eval_batches():
            bsz, k, s = b["input_ids"].shape
            r = np.asarray(rm.score(graphdef, params, b["input_ids"].reshape(bsz * k, s),
                                    b["attention_mask"].reshape(bsz * k, s))).reshape(bsz, k)
            for i in range(bsz):
                n = int(b["rank_valid"][i].sum())
                # the planted quality: how often the response says "good" (read from the text)
                texts = [tok.decode(b["input_ids"][i, j][b["completion_mask"][i, j] > 0]) for j in range(n)]
                truth.append([t.count("good") for t in texts])
                scores.append(r[i, :n])
        return scores, truth

    scores, truth = held_out(job.params)
    assert len(truth) == 12 and all(len(set(t)) == len(t) for t in truth)
    before = _kendall_tau(scores, truth)
    out = run(cfg, job, tmp_path / "run")
    scores, truth = held_out(out["state"].params)
    after = _kendall_tau(scores, truth)
    assert after > 0.8 and after > before + 0.3, (before, after)
    top1 = np.mean([np.argmax(s) == np.argmax(t) for s, t in zip(scores, truth)])
    print(f"held-out Kendall tau: {before:.2f} before, {after:.2f} after; top-1 {top1:.2f}")
    assert top1 >= 0.75


# ---------------------------------------------------------------- export


def test_export_loads_in_transformers_with_the_same_scores(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxalign.data import tiny_tokenizer_path
    from jaxalign.io.hf import load_hf

    # A tokenizer that pads with EOS (as SmolLM2's does): the hard case for transformers, which
    # reads the rightmost token that is not the pad id.
    tok_dir = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_path(), tok_dir)
    tc = json.loads((tok_dir / "tokenizer_config.json").read_text())
    tc["pad_token"] = tc["eos_token"]
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    cfg = _cfg([f"model.tokenizer={tok_dir}", "train.steps=3"])
    tok = common.tokenizer_from(cfg)
    assert tok.pad_token_id == tok.eos_token_id
    job = rm.build_job(cfg)
    out = run(cfg, job, tmp_path / "run")
    final = tmp_path / "run" / "final"
    graphdef, _ = nnx.split(rm.build_model(cfg, common.mesh_from(cfg), tok))
    params = out["state"].params

    hf_cfg = json.loads((final / "config.json").read_text())
    assert hf_cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert hf_cfg["pad_token_id"] != tok.eos_token_id
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(final))
    assert hf_tok.pad_token_id == hf_cfg["pad_token_id"]

    batch = next(job.train_batches)
    ids = np.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])[:6]
    attn = np.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])[:6]
    lengths = attn.sum(-1)
    assert len(set(lengths.tolist())) > 1 and (lengths < ids.shape[1]).any()  # right padding present
    assert (ids[np.arange(len(ids)), lengths - 1] == tok.eos_token_id).all()  # each ends with EOS
    ours = np.asarray(rm.score(graphdef, params, ids, attn))

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(final), dtype=torch.float32)
    model.eval()
    hf_ids = np.where(attn > 0, ids, hf_cfg["pad_token_id"])  # padded as the exported tokenizer pads
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(hf_ids, dtype=torch.long),
                       attention_mask=torch.tensor(attn, dtype=torch.long)).logits[:, 0].numpy()
    assert np.std(ours) > 0  # different sequences, different scores
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

    # jaxalign reads the export back with its head, and model.path can continue from it
    back = load_hf(final, scalar_head=True)
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(ids), jnp.asarray(attn))), ours, atol=1e-5)
    cont = rm.build_model(_cfg([f"model.path={final}", "model.init=pretrained"]),
                          common.mesh_from(cfg), tok)
    np.testing.assert_allclose(np.asarray(cont(jnp.asarray(ids), jnp.asarray(attn))), ours, atol=1e-5)
