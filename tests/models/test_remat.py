"""model.remat's four modes: the same loss and gradients (float32), and the memory each saves,
read from the compiled train step (XLA's buffer assignment: deterministic, no timing)."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model

CFG = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
B, S = 2, 128


def _loss_and_grad(remat):
    graphdef, state = nnx.split(init_model(CFG, seed=3))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, S)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 70 + [0] * 8], B, 0), jnp.int32)  # packed rows

    def loss(state):
        logits = nnx.merge(graphdef, state)(ids, (seg > 0).astype(jnp.int32), segment_ids=seg, remat=remat)
        lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(lp, ids[:, 1:, None], -1) * (seg[:, 1:, None] > 0))

    fn = jax.jit(jax.value_and_grad(loss))
    temp = fn.lower(state).compile().memory_analysis().temp_size_in_bytes
    return fn(state), temp


def test_modes_give_the_same_loss_and_gradients_and_save_memory():
    (l0, g0), keep = _loss_and_grad(False)
    (l1, g1), attention = _loss_and_grad("attention")
    (l2, g2), dots = _loss_and_grad("dots")
    (l3, g3), block = _loss_and_grad(True)
    for loss, grads in ((l1, g1), (l2, g2), (l3, g3)):
        assert abs(float(loss) - float(l0)) < 1e-6
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(grads)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)
    # "attention" keeps no float32 [B, heads, S, S] array per layer that False keeps (False keeps
    # the scores and the probabilities); "dots" not the attention's inputs, its output, nor the
    # norms' and the gated activation's outputs either; whole-block remat keeps less again.
    scores = CFG.num_hidden_layers * B * CFG.num_attention_heads * S * S * 4
    assert keep - attention >= scores, (keep, attention, scores)
    assert dots < attention and block <= dots, (attention, dots, block)


def test_a_bad_mode_is_refused():
    model = init_model(CFG)
    with pytest.raises(ValueError, match="remat: expected False, 'attention', 'dots' or True, got 'yes'"):
        model(jnp.zeros((1, 4), jnp.int32), remat="yes")
