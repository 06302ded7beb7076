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
