"""RAFT: selection against a numpy reference, reward-hacking filters, the generic core on a
non-text problem, the generation-only prompt template, the completion-only SFT loss (by hand),
and a planted reward that rises on held-out prompts through the CLI."""

from __future__ import annotations

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import common, online, raft
from jaxalign.algorithms.experience import ExperienceMaker
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.train.state import TrainState
from tests.algorithms.conftest import TINY, metric_rows, run_cli, tiny_cfg
NEG = -np.inf


# -- selection --------------------------------------------------------------------------------

def _numpy_local(scores: np.ndarray, k: int):
    """Reference: per prompt, the first sample with the highest finite score (none if all -inf)."""
    rows, keep = [], []
    for b, group in enumerate(scores.reshape(-1, k)):
        best = max(range(k), key=lambda j: (group[j], -j))  # highest score, then lowest index
        rows.append(b * k + best)
        keep.append(bool(np.isfinite(group[best])))
    return rows, keep


def _numpy_global(scores: np.ndarray, alpha: float):
    """Reference: the max(1, round(alpha*B)) best rows, best first, ties to the earlier row;
    a filtered (-inf) row among them is not kept."""
    n = max(1, int(round(alpha * len(scores))))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]
    return order, [bool(np.isfinite(scores[i])) for i in order]


LOCAL_SCORES = np.array([0.1, 0.5, 0.5, 0.2,      # tie: the first of the two 0.5s
                         NEG, NEG, NEG, NEG,      # everything filtered: nothing kept
                         0.3, NEG, 0.9, 0.9,
                         NEG, -2.0, NEG, -3.0], np.float32)
GLOBAL_SCORES = np.array([0.2, 0.9, NEG, 0.9, 0.1, 0.5, NEG, 0.3], np.float32)


@pytest.mark.parametrize("ranking, alpha, scores", [
    ("local", 0.25, LOCAL_SCORES),
    ("local", 0.5, LOCAL_SCORES),
    ("global", 0.25, GLOBAL_SCORES),
    ("global", 0.5, GLOBAL_SCORES),
    ("global", 1.0, GLOBAL_SCORES),  # the filtered rows make it into the top k but are not kept
])
def test_selection_matches_numpy_reference(ranking, alpha, scores):
    sel = raft.Selection(ranking, alpha)
    index, keep = raft.select(jnp.asarray(scores), sel)
    if ranking == "local":
        want_rows, want_keep = _numpy_local(scores, int(round(1 / alpha)))
    else:
        want_rows, want_keep = _numpy_global(scores, alpha)
    got_rows, got_keep = np.asarray(index).tolist(), np.asarray(keep).tolist()
    assert got_keep == want_keep
    # Rows that are not kept may point anywhere; the kept ones must be exactly the reference's.
    assert [r for r, k in zip(got_rows, got_keep) if k] == [r for r, k in zip(want_rows, want_keep) if k]
    assert len(got_rows) == sel.num_kept(len(scores) // sel.samples_per_prompt)


def test_raft_iteration_metrics_by_hand():
    scores = GLOBAL_SCORES
    samples = {"x": jnp.arange(8.0)}
    res = raft.raft_iteration(lambda key: samples, lambda s: np.where(np.isfinite(scores), scores, 0.0),
                              raft.Selection("global", 0.25), jax.random.key(0),
                              filter_fn=lambda s, r: jnp.where(jnp.isfinite(jnp.asarray(scores)), r, -jnp.inf))
    assert np.asarray(res.kept["x"]).tolist() == [1.0, 3.0]  # the two 0.9s, in row order
    finite = scores[np.isfinite(scores)]
    m = res.metrics
    assert m["reward/kept_mean"] == pytest.approx(0.9) and m["reward/kept_std"] == pytest.approx(0.0, abs=1e-6)
    assert m["reward/all_mean"] == pytest.approx(finite.mean(), rel=1e-6)
    assert m["reward/all_std"] == pytest.approx(finite.std(), rel=1e-5)
    assert m["kept_fraction"] == pytest.approx(2 / 8) and m["filtered_fraction"] == pytest.approx(2 / 8)


def test_raft_iteration_is_generic_over_sampler_reward_and_finetune_step():
    """No text at all: sample numbers around a mean, reward closeness to 3, 'fine-tune' by
    moving the mean to the kept samples. RAFT finds 3 from 0."""
    sel = raft.Selection("local", 0.125)
    mu = jnp.zeros(())
    for i in range(12):
        res = raft.raft_iteration(
            lambda key, mu=mu: mu + jax.random.normal(key, (16 * sel.samples_per_prompt,)),
            lambda x: -(x - 3.0) ** 2, sel, jax.random.key(i),
            finetune_fn=lambda state, kept, keep: (jnp.sum(kept * keep) / jnp.sum(keep), {"mu": state}),
            state=mu)
        assert res.metrics["reward/kept_mean"] >= res.metrics["reward/all_mean"]
        mu = res.state
    assert abs(float(mu) - 3.0) < 0.3


# -- the language-model instance --------------------------------------------------------------

def _text_raft(*over):
    cfg = tiny_cfg("raft", *over)
    tok = common.tokenizer_from(cfg)
    maker = ExperienceMaker(None, tok, online.reward_from(cfg.algo.reward, tok), cfg.algo.sampling,
                            num_samples=cfg.algo.selection().samples_per_prompt)
    return cfg, tok, raft.TextRaft(cfg.algo, maker, tok)


def _hand_samples(tok, prompts, completions, p=8, t=6):
    """Training rows by hand: left-padded prompt ids, then completion ids + EOS, right-padded."""
    pad, eos = tok.pad_token_id, tok.eos_token_id
    ids = np.full((len(prompts), p + t), pad, np.int32)
    attn = np.zeros_like(ids)
    comp = np.zeros_like(ids)
    for i, (pr, c) in enumerate(zip(prompts, completions)):
        pi = tok(pr, add_special_tokens=False)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + [eos]
        ids[i, p - len(pi):p], attn[i, p - len(pi):p] = pi, 1
        ids[i, p:p + len(ci)], attn[i, p:p + len(ci)], comp[i, p:p + len(ci)] = ci, 1, 1
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(attn),
            "completion_mask": jnp.asarray(comp), "lengths": jnp.asarray(comp.sum(1)),
            "finished": jnp.ones(len(prompts), bool)}


def test_filters_drop_degenerate_samples():
    # K = 2: prompt 0's samples "a" (too short: 1 letter + EOS < 3 tokens) and "ab";
    # prompt 1's "xaaaa" (forbidden 'x', highest score) and "bba".
    cfg, tok, tr = _text_raft("raft.alpha=0.5", "raft.min_length=3", "raft.forbidden_pattern=x")
    samples = _hand_samples(tok, ["hi", "hi", "yo", "yo"], ["a", "ab", "xaaaa", "bba"])
    raw = tr.reward_fn(samples)
    np.testing.assert_allclose(raw, [1.0, 0.5, 0.8, 1 / 3], rtol=1e-6)
    filtered = np.asarray(tr.filter_fn(samples, jnp.asarray(raw)))
    assert np.isneginf(filtered[[0, 2]]).all() and np.isfinite(filtered[[1, 3]]).all()
    tr.sample_fn = lambda params, prompt_batch: (lambda key: samples)
    batch, metrics = tr.iteration(None, {}, jax.random.key(0))
    # The kept rows are the lower-scored but non-degenerate samples 1 and 3.
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), np.asarray(samples["input_ids"])[[1, 3]])
    assert metrics["filtered_fraction"] == pytest.approx(0.5)
    assert metrics["reward/kept_mean"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert metrics["reward/mean"] == pytest.approx(np.mean(raw))


def test_a_prompt_whose_samples_are_all_filtered_carries_no_loss():
    cfg, tok, tr = _text_raft("raft.alpha=0.5", "raft.forbidden_pattern=z")
    samples = _hand_samples(tok, ["hi", "hi", "yo", "yo"], ["za", "zb", "aa", "b"])
    tr.sample_fn = lambda params, prompt_batch: (lambda key: samples)
    batch, metrics = tr.iteration(None, {}, jax.random.key(0))
    assert np.asarray(batch["completion_mask"])[0].sum() == 0  # prompt 0: nothing kept
    np.testing.assert_array_equal(np.asarray(batch["completion_mask"])[1], np.asarray(samples["completion_mask"])[2])
    assert metrics["kept_fraction"] == pytest.approx(1 / 4)


def test_completion_only_sft_loss_by_hand():
    """The loss on the iteration's batch is the mean NLL of the kept completions' tokens (EOS
    included) only: no prompt token, no padding, nothing of the rows that were not kept."""
    cfg, tok, tr = _text_raft("raft.alpha=0.5", "raft.forbidden_pattern=q", "mesh.fsdp=1")
    completions = ["aab", "bb", "qa", "c"]  # kept: 0 (prompt 0), 3 (prompt 1: 2 is forbidden)
    samples = _hand_samples(tok, ["hello", "hello", "hey", "hey"], completions)
    tr.sample_fn = lambda params, prompt_batch: (lambda key: samples)
    batch, _ = tr.iteration(None, {}, jax.random.key(0))
    model = common.model_from(cfg, common.mesh_from(cfg), tok)
    graphdef, params = nnx.split(model)
    loss, (weight, metrics, _) = jax.jit(raft.make_loss(graphdef, cfg.algo))(params, batch, None,
                                                                            jax.random.key(0), {})
    logits = np.asarray(jax.jit(lambda b: model(b["input_ids"], b["attention_mask"]))(batch), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ids = np.asarray(batch["input_ids"])
    nll = []
    for row, text in ((0, completions[0]), (1, completions[3])):
        n = len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        for pos in range(8, 8 + n):  # the completion starts after the 8 prompt slots
            nll.append(-logp[row, pos - 1, ids[row, pos]])
    assert float(weight) == len(nll) == 4 + 2
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)


def test_generation_template_is_seen_by_the_sampler_only(monkeypatch):
    seen = []
    original = ExperienceMaker.sample

    def spy(self, params, prompt_ids, prompt_mask, key):
        seen.append((np.asarray(prompt_ids), np.asarray(prompt_mask)))
        roll = original(self, params, prompt_ids, prompt_mask, key)
        seen.append(roll)
        return roll

    monkeypatch.setattr(ExperienceMaker, "sample", spy)
    cfg = tiny_cfg("raft", "raft.generation_template='MAGIC! {prompt} Go:'", "train.batch_size=4")
    job = raft.build_job(cfg)
    tok = common.tokenizer_from(cfg)
    state = TrainState.create(job.params, job.tx, cfg.seed)
    prompts = next(job.train_batches)
    batch, _ = job.experience(state, prompts)
    (gen_ids, gen_mask), roll = seen
    k = cfg.algo.selection().samples_per_prompt
    prefix = tok("MAGIC! ", add_special_tokens=False)["input_ids"]
    suffix = tok(" Go:", add_special_tokens=False)["input_ids"]
    for b in range(len(prompts["prompt_ids"])):
        plain = prompts["prompt_ids"][b][prompts["prompt_mask"][b] > 0].tolist()
        # The sampler: prefix + prompt + suffix, joined as tokens.
        assert gen_ids[b][gen_mask[b] > 0].tolist() == prefix + plain + suffix
        assert tok.decode(gen_ids[b][gen_mask[b] > 0]).startswith("MAGIC! ")
    ids, attn, comp = (np.asarray(batch[x]) for x in ("input_ids", "attention_mask", "completion_mask"))
    p = prompts["prompt_ids"].shape[1]
    gen_completions = np.asarray(roll.completion_ids)
    for r in range(ids.shape[0]):
        prompt_part = ids[r][(attn[r] > 0) & (comp[r] == 0)].tolist()
        plain = prompts["prompt_ids"][r][prompts["prompt_mask"][r] > 0].tolist()
        assert prompt_part == plain  # the SFT batch holds the plain prompt ...
        assert "MAGIC" not in tok.decode(ids[r][attn[r] > 0])
        # ... followed by one of this prompt's sampled completions, token for token.
        assert any((ids[r, p:] == gen_completions[r * k + j]).all() for j in range(k))


# -- config and end to end --------------------------------------------------------------------

@pytest.mark.parametrize("over, key", [
    (["raft.ranking=best"], "raft.ranking"),
    (["raft.alpha=0.3"], "raft.alpha"),  # local: 1/alpha not whole
    (["raft.alpha=0"], "raft.alpha"),
    (["raft.forbidden_pattern=(a"], "raft.forbidden_pattern"),
    (["raft.generation_template=no placeholder"], "raft.generation_template"),
    (["raft.num_minibatches=3"], "raft.num_minibatches"),  # 8 kept rows
    (["raft.sampling.temperature=0"], "raft.sampling.temperature"),
])
def test_config_errors(over, key):
    with pytest.raises(JaxalignError, match=key.replace(".", r"\.")):
        tiny_cfg("raft", *over)


def test_default_temperature_is_the_papers():
    cfg = load_config(None, ["raft.sampling.max_new_tokens=8"], algorithm="raft")
    assert cfg.algo.sampling.temperature == 0.85 and cfg.algo.alpha == 0.125


@pytest.mark.parametrize("ranking", ["local", "global"])
def test_planted_reward_rises_on_held_out_prompts(tmp_path, ranking):
    run = tmp_path / ranking
    over = ["train.steps=8", "train.eval_every=2", f"raft.ranking={ranking}"]
    if ranking == "global":  # 16 prompts, one sample each, the best 4 kept; 2 minibatches x 2 epochs
        over += ["train.batch_size=16", "raft.num_minibatches=2", "mesh.fsdp=1"]  # (one device: faster)
    rc = run_cli("raft", run, *over)
    assert rc == 0
    rows = metric_rows(run)
    evals = [r["eval/reward"] for r in rows if "eval/reward" in r]
    assert evals[0] < 0.2 and evals[-1] > 0.6, evals
    train_rows = [r for r in rows if "reward/kept_mean" in r]
    assert len(train_rows) == 8
    for r in train_rows:
        assert all(math.isfinite(v) for v in r.values()), r
        assert r["reward/kept_mean"] >= r["reward/all_mean"] - 1e-6
        assert r["kept_fraction"] <= 0.25 + 1e-6
        assert {"response_length", "response_length/kept", "reward/all_std", "reward/kept_std",
                "time/generate", "time/score", "nll"} <= set(r)
        # The defaults' fine-tuning phase: 2 epochs x (local: 4 automatic minibatches of the 8
        # kept rows; global: the 2 set above), every update counted in the log.
        assert r["updates"] == 2 * (4 if ranking == "local" else 2), r["updates"]
    assert (run / "final" / "config.json").exists()


def test_default_fine_tuning_phase_makes_several_updates_per_iteration():
    """LMFlow's phase at small scale: several epochs over small minibatches of the kept samples."""
    for over, kept_minibatches in (([], 4), (["train.batch_size=6"], 3), (["train.batch_size=5"], 1),
                                   (["train.batch_size=16", "train.micro_batch_size=8"], 4),
                                   (["train.batch_size=8", "train.micro_batch_size=2"], 2)):
        cfg = load_config(TINY["raft"], over, algorithm="raft")
        assert cfg.algo.epochs == 2 and cfg.algo.num_minibatches == kept_minibatches, over
        assert cfg.algo.epochs * cfg.algo.num_minibatches > 1
    assert raft.auto_minibatches(8, 1) == 4 and raft.auto_minibatches(7, 1) == 1
    assert raft.auto_minibatches(12, 2) == 3 and raft.auto_minibatches(4, 4) == 1
