"""Reward-model training on packed preference batches (data.packing) equals the unpacked path on
the same pairs: per-pair scores (each segment scored at its own last token), the pairwise /
kwise / listwise losses (margin, centring, LM term) and their gradients (< 1e-5, float32)."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import rm
from jaxalign.models.heads import scalar_head_from_lm
from jaxalign.models.llama import init_model
from jaxalign.train.state import accumulate
from tests.algorithms.test_packing_dpo import CFG, _batches, _max_diff


def _model(seed):
    return scalar_head_from_lm(init_model(CFG, seed=seed), seed=seed + 1)


def _margins(packed, plain, seed=0):
    """Random per-pair margins, the same pair's in both layouts."""
    valid = np.asarray(packed["pair_valid"]).astype(bool)
    m = np.random.default_rng(seed).normal(size=int(valid.sum())).astype(np.float32)
    grid = np.zeros(valid.shape, np.float32)
    grid[valid] = m  # row-major slots: the packing order, as the unpacked rows are listed
    return dict(packed, margin=jnp.asarray(grid)), dict(plain, margin=jnp.asarray(m))


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_packed_equal_unpacked(seed):
    packed, plain = _batches(seed=seed)
    model = _model(seed)
    rw, rl, _ = rm._packed_pairs(model, packed)
    valid = np.asarray(packed["pair_valid"]).reshape(-1).astype(bool)
    np.testing.assert_allclose(np.asarray(rw)[valid], np.asarray(model(plain["chosen_input_ids"],
                               plain["chosen_attention_mask"])), atol=1e-5)
    np.testing.assert_allclose(np.asarray(rl)[valid], np.asarray(model(plain["rejected_input_ids"],
                               plain["rejected_attention_mask"])), atol=1e-5)


CASES = [
    (dict(loss="pairwise"), 1),
    (dict(loss="pairwise", center_coef=0.01, lm_coef=0.5), 2),
    (dict(loss="kwise", lm_coef=0.3), 1),
    (dict(loss="listwise"), 2),
]


@pytest.mark.parametrize("kw,n_micro", CASES)
def test_loss_and_gradient_packed_equal_unpacked(kw, n_micro):
    packed, plain = _batches(n=14, seed=8)
    packed = {k: v for k, v in packed.items() if not k.startswith("ref_")}
    plain = {k: v for k, v in plain.items() if not k.startswith("ref_")}
    packed, plain = _margins(packed, plain)
    graphdef, params = nnx.split(_model(9))
    loss_fn = rm.make_loss(graphdef, rm.Config(**kw))
    key = jax.random.key(0)
    g_p, m_p, _ = accumulate(loss_fn, params, packed, None, key, {}, n_micro)
    g_u, m_u, _ = accumulate(loss_fn, params, plain, None, key, {}, 1)
    # reward_std is a per-micro-batch std (not additive): equal without accumulation only.
    for name in ("loss", "accuracy", "margin", "reward_mean") + (("reward_std",) if n_micro == 1 else ()):
        assert abs(float(m_p[name]) - float(m_u[name])) < 1e-5, name
    assert _max_diff(g_p, g_u) < 1e-5
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_p)) > 1e-4
