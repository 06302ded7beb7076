"""DPO on packed batches (data.packing) equals DPO on unpacked batches of the same pairs,
computed by the unpacked path: per-pair policy log-probs and lengths, the loss and its gradient
(< 1e-5, float32) for several loss types, with a reference model, precomputed reference
log-probs or none, and with gradient accumulation over row micro-batches."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms import dpo
from jaxalign.data import collate
from jaxalign.data.packing import collate_packed, pack, unit_length
from jaxalign.errors import JaxalignError
from jaxalign.losses.dpo import dpo_loss
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model
from jaxalign.train.state import accumulate
from tests.algorithms.conftest import tiny_cfg
from tests.data.test_packing import pref_examples

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _batches(n=12, capacity=48, seed=0, k=None):
    rng = np.random.default_rng(seed + 100)
    ex = pref_examples(n, seed=seed, lo=1, hi=14, floats=False)
    for e in ex:
        e["ref_chosen_logp"], e["ref_rejected_logp"] = (float(x) for x in rng.normal(-20, 5, 2))
    rows = pack([unit_length(e) for e in ex], capacity)
    if len(rows) % 2:
        rows = rows[:-1]
    used = [i for r in rows for i in r]
    k = k or max(len(r) for r in rows) + 1  # one always-empty slot per row, at least
    packed = collate_packed(ex, rows, pad_id=0, length=capacity, max_units=k)
    plain = collate([ex[i] for i in used], pad_id=0)
    return jax.tree.map(jnp.asarray, packed), jax.tree.map(jnp.asarray, plain)


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)), default=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_logps_packed_equal_unpacked(seed):
    packed, plain = _batches(seed=seed)
    model = init_model(CFG, seed=seed)
    got = dpo.pair_logps(model, packed)
    want = dpo.pair_logps(model, plain)
    valid = np.asarray(dpo.pair_valid(packed))
    assert valid.sum() == plain["chosen_input_ids"].shape[0] and not valid.all()
    assert np.asarray(packed["shared_length"]).sum() > 0  # the pairs' prompts are shared
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g)[valid], np.asarray(w), atol=1e-5, rtol=1e-6)
    assert np.all(np.asarray(got[0])[~valid] == 0)


CASES = [
    ({"loss_type": "sigmoid"}, "model", 1),
    ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "model", 2),
    ({"loss_type": "ipo"}, "precomputed", 1),
    ({"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0, 0.5]}, "precomputed", 2),
    # The SFT (RPO) term is a token mean per micro-batch, weighted by pairs, packed or not: it
    # equals the global batch's only without accumulation.
    ({"loss_type": "sigmoid", "rpo_alpha": 0.5}, "precomputed", 1),
    ({"loss_type": "simpo"}, None, 2),
    ({"loss_type": "bco_pair"}, "model", 1),
]


@pytest.mark.parametrize("kw,reference,n_micro", CASES)
def test_loss_and_gradient_packed_equal_unpacked(kw, reference, n_micro):
    packed, plain = _batches(n=14, seed=5)
    graphdef, params = nnx.split(init_model(CFG, seed=6))
    frozen = nnx.split(init_model(CFG, seed=7))[1] if reference == "model" else None
    if reference != "precomputed":
        packed = {k: v for k, v in packed.items() if not k.startswith("ref_")}
        plain = {k: v for k, v in plain.items() if not k.startswith("ref_")}
    algo = dpo.Config(**kw)
    loss_fn = dpo.make_loss(graphdef, algo)
    extras = dpo.initial_extras(algo)
    key = jax.random.key(0)
    g_p, m_p, e_p = accumulate(loss_fn, params, packed, frozen, key, extras, n_micro)
    g_u, m_u, e_u = accumulate(loss_fn, params, plain, frozen, key, extras, 1)
    assert abs(float(m_p["loss"]) - float(m_u["loss"])) < 1e-5
    for name in ("rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert abs(float(m_p[name]) - float(m_u[name])) < 1e-4
    assert _max_diff(g_p, g_u) < 1e-5
    assert _max_diff(e_p, e_u) < 1e-5
    # The gradient is not trivially zero (the comparison can fail).
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_p)) > 1e-4


def test_valid_mask_closed_form():
    """dpo_loss with empty slots equals dpo_loss on the valid pairs alone."""
    rng = np.random.default_rng(0)
    pw, pl, rw, rl = (jnp.asarray(rng.normal(-10, 3, 6), jnp.float32) for _ in range(4))
    valid = jnp.asarray([1, 0, 1, 1, 0, 1], bool)
    lw, ll = jnp.asarray(rng.integers(1, 9, 6), jnp.float32), jnp.asarray(rng.integers(1, 9, 6), jnp.float32)
    for t in ("sigmoid", "ipo", "nca_pair", "sppo_hard", "sft"):
        got, _ = dpo_loss(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll, loss_type=t, valid=valid)
        v = np.asarray(valid)
        want, _ = dpo_loss(pw[v], pl[v], rw[v], rl[v], chosen_lengths=lw[v], rejected_lengths=ll[v], loss_type=t)
        assert abs(float(got) - float(want)) < 1e-6, t
    with pytest.raises(ValueError, match="aot"):
        dpo_loss(pw, pl, rw, rl, loss_type="aot", valid=valid)


def test_aot_with_packing_is_a_config_error():
    with pytest.raises(JaxalignError, match="dpo.loss_type"):
        tiny_cfg("dpo", "data.packing=true", "dpo.loss_type=aot")
