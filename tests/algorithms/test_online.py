"""The shared online pipeline: every online algorithm builds its job through ``online.job`` from
an ``OnlineSpec``; the one frozen-copy helper; the experience phase's hooks (prompt transform,
reward filter) on a toy sampler; full batches for fixed-shape passes; pairs from scores."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.algorithms import common, online
from jaxalign.algorithms.experience import ExperienceMaker, GenerationTemplate, RewardFilter, SamplingConfig
from jaxalign.config import load_config
from jaxalign.data import collate, full_batches
from jaxalign.rewards import RewardConfig, build_reward
from jaxalign.rollout import Rollout

ONLINE = {"grpo": "grpo", "online-dpo": "online_dpo", "raft": "raft", "ppo": "ppo"}


@pytest.mark.parametrize("algorithm", list(ONLINE))
def test_every_online_algorithm_builds_its_job_through_online_job(algorithm, monkeypatch):
    module = importlib.import_module(f"jaxalign.algorithms.{ONLINE[algorithm]}")
    cfg = load_config(f"configs/{algorithm}_tiny.yaml", ["mesh.fsdp=1"], algorithm=algorithm)
    seen = []
    monkeypatch.setattr(online, "job", lambda cfg_, spec: seen.append(spec) or "the job")
    assert module.build_job(cfg) == "the job"
    (spec,) = seen
    assert isinstance(spec, online.OnlineSpec) and callable(spec.make_loss)
    assert spec.sampling is cfg.algo.sampling and spec.reward is cfg.algo.reward


def test_spec_reference_is_checked():
    with pytest.raises(ValueError, match="reference"):
        online.OnlineSpec(SamplingConfig(), RewardConfig(), make_loss=None, reference="model")


def test_frozen_copy_gives_distinct_buffers_with_equal_values_on_the_same_shardings():
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    sharded = jax.device_put(jnp.arange(8.0).reshape(2, 4), NamedSharding(mesh, PartitionSpec("data")))
    z = jnp.zeros((), jnp.float32)
    tree = {"w": sharded, "a": z, "b": z}  # one buffer twice: the copies must not share it
    out = common.frozen_copy(tree)
    ptrs = lambda x: [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
    for k in tree:
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(tree[k]))
        assert out[k].sharding == tree[k].sharding and out[k].committed == tree[k].committed
        assert not set(ptrs(out[k])) & set(ptrs(tree[k]))
    assert ptrs(out["a"]) != ptrs(out["b"])


# -- the experience phase's hooks on a toy sampler ---------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return common.tokenizer_from(load_config("configs/raft_tiny.yaml", [], algorithm="raft"))


class _ToySampler(ExperienceMaker):
    """Samples nothing: every row's completion is ``completions[row]`` (+ EOS), whatever the prompt;
    records the prompts it was given."""

    completions: list[str] = []

    def sample(self, params, prompt_ids, prompt_mask, key, num_samples=None):
        self.seen = (np.asarray(prompt_ids), np.asarray(prompt_mask))
        n, t = len(self.completions), self.sampling.max_new_tokens
        comp = np.full((n, t), self.pad_id, np.int32)
        cmask = np.zeros((n, t), np.int32)
        for i, c in enumerate(self.completions):
            ids = self.tokenizer(c, add_special_tokens=False)["input_ids"] + [self.eos[0]]
            comp[i, :len(ids)], cmask[i, :len(ids)] = ids, 1
        pid = np.repeat(self.seen[0], self.num_samples, axis=0)
        pm = np.repeat(self.seen[1], self.num_samples, axis=0)
        p = pid.shape[1]
        return Rollout(tokens=jnp.asarray(np.concatenate([pid, comp], 1)),
                       attention_mask=jnp.asarray(np.concatenate([pm, cmask], 1)),
                       completion_mask=jnp.asarray(np.concatenate([np.zeros_like(pm), cmask], 1)),
                       logprobs=jnp.asarray(-0.5 * cmask, jnp.float32), lengths=jnp.asarray(cmask.sum(1)),
                       finished=jnp.ones(n, bool), prompt_length=p)


def _maker(tok, completions, **hooks):
    reward = build_reward(RewardConfig(kind="keyword", pattern="a", normalize=True), tok)
    m = _ToySampler(None, tok, reward, SamplingConfig(max_new_tokens=6), num_samples=2, **hooks)
    m.completions = completions
    return m


def _prompts(tok, texts):
    return collate([{"prompt_ids": np.asarray(tok(t, add_special_tokens=False)["input_ids"], np.int32)}
                    for t in texts], tok.pad_token_id)


def test_prompt_transform_is_seen_by_the_sampler_only(tok):
    maker = _maker(tok, ["ab", "aa", "b", "ba"], prompt_transform=GenerationTemplate("Hi {prompt} ok"))
    batch = _prompts(tok, ["xy", "z"])
    exp, (prompts, comps), _ = maker(None, batch, jax.random.key(0))
    gen_ids, gen_mask = maker.seen
    assert [tok.decode(r[m > 0]) for r, m in zip(gen_ids, gen_mask)] == ["Hi xy ok", "Hi z ok"]
    assert prompts == ["xy", "xy", "z", "z"] and comps == ["ab", "aa", "b", "ba"]  # rows: the plain prompt
    p = batch["prompt_ids"].shape[1]
    assert exp["input_ids"].shape[1] == p + 6
    cm = np.asarray(exp["completion_mask"], bool)
    assert not cm[:, :p].any()
    # The sampler's log-probs sit at the rows' completion columns.
    np.testing.assert_array_equal(np.asarray(exp["old_logps"]), np.where(cm, -0.5, 0.0))
    np.testing.assert_allclose(np.asarray(exp["scores"]), [0.5, 1.0, 0.0, 0.5])


def test_reward_filter_gives_minus_inf_and_keeps_the_raw_scores(tok):
    maker = _maker(tok, ["ab", "aaq", "a", "ba"], reward_filter=RewardFilter(min_length=3, forbidden_pattern="q"))
    exp, _, metrics = maker(None, _prompts(tok, ["xy", "z"]), jax.random.key(0))
    # "aaq" matches the pattern; "a" + EOS is 2 < 3 tokens.
    raw = [0.5, 2 / 3, 1.0, 0.5]
    np.testing.assert_allclose(np.asarray(exp["raw_scores"]), raw, rtol=1e-6)
    got = np.asarray(exp["scores"])
    assert np.isneginf(got[[1, 2]]).all()
    np.testing.assert_allclose(got[[0, 3]], [0.5, 0.5])
    assert metrics["reward/mean"] == pytest.approx(np.mean(raw))  # the reward's metrics: raw scores
    # Without hooks, no raw_scores key and the plain rollout layout.
    exp2, _, _ = _maker(tok, ["ab", "aaq", "a", "ba"])(None, _prompts(tok, ["xy", "z"]), jax.random.key(0))
    assert "raw_scores" not in exp2


# -- the prompt rows' columns reach the reward (training and held out) -------------------------

MATH_AND_FMT = [RewardConfig(kind="math", name="correct"),
                RewardConfig(kind="keyword", pattern="!", name="fmt", weight=0.5)]


def _columns_maker(tok, completions, table):
    m = _ToySampler(None, tok, build_reward(MATH_AND_FMT, tok), SamplingConfig(max_new_tokens=6), num_samples=2,
                    columns=table)
    m.completions = completions
    return m


def test_columns_reach_the_reward_aligned_with_the_samples(tok):
    maker = _columns_maker(tok, ["4", "3", "3", "3!"], {0: {"answer": 3}, 1: {"answer": 4, "id": "b"}})
    batch = dict(_prompts(tok, ["xy", "z"]), row=np.array([1, 0], np.int32))  # prompt "xy" is source row 1
    assert maker.columns_of(batch) == {"answer": [4, 4, 3, 3], "id": ["b", "b", None, None]}
    exp, _, metrics = maker(None, batch, jax.random.key(0))
    correct, fmt = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(exp["scores"]), correct + 0.5 * fmt)
    assert metrics["reward/correct"] == pytest.approx(0.75) and metrics["reward/fmt"] == pytest.approx(0.25)
    assert metrics["reward/mean"] == pytest.approx(np.mean(correct + 0.5 * fmt))


def test_held_out_evaluation_scores_with_the_held_out_columns(tok):
    cfg = load_config("configs/grpo_tiny.yaml", ["train.batch_size=2"], algorithm="grpo")
    ev = [{"prompt_ids": np.asarray(tok(t, add_special_tokens=False)["input_ids"], np.int32), "row": r,
           "columns": {"answer": a}} for t, r, a in [("p", 10, 5), ("q", 11, 7), ("r", 12, 9)]]
    # The train table must not be read for held-out rows: its row 10 says otherwise.
    maker = _columns_maker(tok, ["5", "x", "7!", "y"], {10: {"answer": 0}})
    s = online.Setup(None, None, None, tok, None, maker, None, ev, 0,
                     eval_columns={e["row"]: e["columns"] for e in ev})
    got = online.make_evaluate(cfg, s)(None)
    # Each batch's first sample per prompt is scored: "5" for rows 10 and 12, "7!" for row 11;
    # the last batch's second prompt is a repeat of row 12 and not counted.
    assert got["reward/correct"] == pytest.approx(2 / 3) and got["reward/fmt"] == pytest.approx(1 / 3)
    assert got["reward"] == pytest.approx((1 + 1.5 + 0) / 3)


def test_raft_passes_on_the_reward_components():
    from jaxalign.algorithms import raft

    cfg = load_config("configs/raft_tiny.yaml", ["raft.reward=[{kind: math, name: correct}, {kind: length}]"],
                      algorithm="raft")
    k, n = cfg.algo.selection().samples_per_prompt, 2
    rows = {"input_ids": np.ones((n * k, 4), np.int32), "attention_mask": np.ones((n * k, 4), np.int32),
            "completion_mask": np.ones((n * k, 4), np.int32), "lengths": np.full(n * k, 2, np.int32),
            "finished": np.ones(n * k, np.float32), "scores": np.arange(n * k, dtype=np.float32)}
    metrics = {"time/generate": 1.0, "time/score": 2.0, "eos_rate": 1.0, "reward/correct": 0.25,
               "reward/length": -0.5, "reward/max": 7.0}
    _, out = raft.spec(cfg).to_batch(rows, metrics, None)
    assert out["reward/correct"] == 0.25 and out["reward/length"] == -0.5
    assert "reward/max" not in out  # RAFT's own reward metrics, as before


# -- shared small pieces ------------------------------------------------------------------------

def test_full_batches_pad_the_last_with_repeats_of_its_last_example():
    ex = [{"prompt_ids": np.arange(1, n + 1, dtype=np.int32)} for n in (1, 2, 3, 4, 5)]
    out = list(full_batches(ex, 2, 0))
    assert [(start, real) for start, _, real in out] == [(0, 2), (2, 2), (4, 1)]
    last = out[-1][1]["prompt_ids"]
    assert last.shape[0] == 2 and (last[0] == last[1]).all()


def test_pair_rows_numpy_and_jax_agree_and_numpy_keeps_its_precision():
    from jaxalign.algorithms.online_dpo import pair_rows

    s = np.array([1.0, 0.0, 0.5, 0.5, -1.0, 2.0])
    for c, r in (pair_rows(s), pair_rows(jnp.asarray(s))):
        assert np.asarray(c).tolist() == [0, 2, 5] and np.asarray(r).tolist() == [1, 3, 4]
    close = np.array([1.0, 1.0 + 1e-12])  # equal in float32, not in float64
    assert np.asarray(pair_rows(close)[0]).tolist() == [1]
