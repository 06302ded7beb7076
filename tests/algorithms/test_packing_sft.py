"""SFT on packed batches (data.packing) equals SFT on unpacked batches, computed by the unpacked
path: per-example NLL, the token_mean and sequence_mean losses and their gradients (< 1e-5,
float32), also with gradient accumulation over row micro-batches; and a short packed SFT run
lowers the loss as the unpacked one does."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import sft
from jaxalign.data import collate
from jaxalign.data.packing import collate_packed, pack
from jaxalign.losses.segments import segment_counts, segment_sums
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model
from jaxalign.train.state import accumulate
from tests.algorithms.conftest import SMALL_MODEL, metric_rows, run_cli
from tests.data.test_packing import sft_examples

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _batches(n=12, capacity=40, seed=0):
    ex = sft_examples(n, seed=seed, lo=2, hi=25)
    rows = pack([len(e["input_ids"]) for e in ex], capacity)
    if len(rows) % 2:
        rows = rows[:-1]  # an even number of rows, for two micro-batches
    used = [i for r in rows for i in r]
    packed = collate_packed(ex, rows, pad_id=0, length=capacity)
    plain = collate([ex[i] for i in used], pad_id=0)
    return jax.tree.map(jnp.asarray, packed), jax.tree.map(jnp.asarray, plain), len(used)


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.mark.parametrize("seed", [0, 1])
def test_per_example_nll_packed_equals_unpacked(seed):
    packed, plain, n = _batches(seed=seed)
    model = init_model(CFG, seed=seed)
    lp, m = sft.completion_logps(model, packed)
    per_packed = segment_sums(-lp, m, packed["segment_ids"], 40)
    cnt = segment_counts(m, packed["segment_ids"], 40)
    lq, mq = sft.completion_logps(model, plain)
    per_plain = np.asarray(jnp.sum(jnp.where(mq, -lq, 0.0), -1))
    got = np.asarray(per_packed)[np.asarray(cnt) > 0]
    assert got.size > 0 and np.asarray(cnt).sum() == np.asarray(mq).sum()
    # Rows hold examples in packing order, and `plain` lists them in that order too.
    want = per_plain[np.asarray(jnp.sum(mq, -1)) > 0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("n_micro", [1, 2])
def test_loss_and_gradient_packed_equal_unpacked(aggregation, n_micro):
    packed, plain, n = _batches(n=14, seed=3)
    graphdef, params = nnx.split(init_model(CFG, seed=4))
    loss_fn = sft.make_loss(graphdef, sft.Config(aggregation=aggregation))
    key = jax.random.key(0)
    g_p, m_p, _ = accumulate(loss_fn, params, packed, None, key, {}, n_micro)
    g_u, m_u, _ = accumulate(loss_fn, params, plain, None, key, {}, 1)
    assert abs(float(m_p["loss"]) - float(m_u["loss"])) < 1e-5
    assert _max_diff(g_p, g_u) < 1e-5
    # Against the closed form from per-token log-probs of the unpacked path.
    lq, mq = sft.completion_logps(nnx.merge(graphdef, params), plain)
    nll = jnp.where(mq, -lq, 0.0)
    if aggregation == "token_mean":
        want = jnp.sum(nll) / jnp.sum(mq)
    else:
        has = jnp.sum(mq, -1) > 0
        want = jnp.sum(jnp.where(has, jnp.sum(nll, -1) / jnp.maximum(jnp.sum(mq, -1), 1), 0)) / jnp.sum(has)
    assert abs(float(m_p["loss"]) - float(want)) < 1e-5


def test_packed_sft_run_lowers_the_loss(tmp_path):
    common = [*SMALL_MODEL, "train.steps=12", "train.log_every=1", "train.eval_every=0", "optim.warmup_steps=0",
              "data.eval_fraction=0.0", "train.save_final=false", "train.plots=false"]
    assert run_cli("sft", tmp_path / "packed", *common, "data.packing=true", "train.batch_size=4") == 0
    assert run_cli("sft", tmp_path / "plain", *common) == 0
    packed = [r["loss"] for r in metric_rows(tmp_path / "packed") if "loss" in r]
    plain = [r["loss"] for r in metric_rows(tmp_path / "plain") if "loss" in r]
    assert len(packed) == 12
    # Same random start: the first losses agree in scale; both fall by a similar margin.
    assert np.mean(packed[-3:]) < packed[0] - 0.5
    assert np.mean(plain[-3:]) < plain[0] - 0.5


def test_packed_run_resumed_inside_an_epoch_is_bit_exact(tmp_path, monkeypatch):
    """A packed SFT run stopped after a checkpoint in the middle of its first packed epoch and
    rerun ends with the same bytes and the same logged numbers as an uninterrupted run."""
    import shutil

    from jaxalign.algorithms import common
    from jaxalign.algorithms import data_setup
    from tests.algorithms.conftest import tiny_cfg

    args = [*SMALL_MODEL, "train.steps=6", "train.save_every=3", "train.log_every=1", "train.eval_every=0",
            "data.eval_fraction=0.0", "train.plots=false", "data.packing=true", "train.batch_size=2",
            "optim.warmup_steps=0"]
    cfg = tiny_cfg("sft", *args)
    tok = common.tokenizer_from(cfg)
    train, _ = data_setup.datasets_from(cfg, tok, ("sft",))
    it, _ = data_setup.batch_iterators(cfg, train, [], tok.pad_token_id)
    assert it.batches_per_epoch > 6  # step 3 is inside the first packed epoch
    assert run_cli("sft", tmp_path / "ref", *args) == 0
    assert run_cli("sft", tmp_path / "run", *args) == 0
    # Back to the step-3 checkpoint, as if the run had been killed after it.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "6")
    (tmp_path / "run" / "final").unlink() if (tmp_path / "run" / "final").is_symlink() else \
        shutil.rmtree(tmp_path / "run" / "final")
    from jaxalign.data.packing import PackedBatchIterator

    loaded = []
    original = PackedBatchIterator.load_state_dict
    monkeypatch.setattr(PackedBatchIterator, "load_state_dict",
                        lambda self, state: (loaded.append(dict(state)), original(self, state))[1])
    assert run_cli("sft", tmp_path / "run", *args) == 0
    assert [(s["epoch"], s["position"], s["packing"]) for s in loaded] == [(0, 3, True)]  # it did resume
    rows = [r for r in metric_rows(tmp_path / "run") if "loss" in r]
    ref = [r for r in metric_rows(tmp_path / "ref") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r, q in zip(rows, ref):
        assert r["loss"] == q["loss"] and r["grad_norm"] == q["grad_norm"], r["step"]
    final = lambda d: (tmp_path / d / "final").resolve() / "model.safetensors"  # noqa: E731
    assert final("run").read_bytes() == final("ref").read_bytes()
