"""PPO's optimizer over ``{"policy", "critic"}``: gradient clipping of the joint global norm (the
default, as MOSS-RLHF's single engine holding both models) or per model, each checked over
several steps against an independent optax chain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.algorithms import ppo
from jaxalign.algorithms import ppo_experience as px
from jaxalign.config.schema import OptimConfig
from jaxalign.errors import JaxalignError
from tests.algorithms.conftest import tiny_cfg

CLIP, LR = 1.0, 0.1


def _grads(seed: int):
    """Policy gradients of norm ~10 and critic gradients of norm ~0.3: per-model and joint
    clipping disagree on both."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"policy": {"w": 10.0 * jax.random.normal(k1, (4, 3)) / np.sqrt(12)},
            "critic": {"v": 0.3 * jax.random.normal(k2, (5,)) / np.sqrt(5)}}


def _adam():
    return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.scale(-LR))


def _run(tx, steps: int = 3):
    params = jax.tree.map(jnp.zeros_like, _grads(0))
    state = tx.init(params)
    out = []
    for i in range(steps):
        upd, state = tx.update(_grads(i), state, params)
        out.append(upd)
    return out


def _jaxalign_tx(scope: str):
    optim = OptimConfig(lr=LR, schedule="constant", warmup_steps=0, grad_clip=CLIP, b1=0.9, b2=0.999,
                        eps=1e-8, weight_decay=0.0)
    tx, _, _ = px.make_optimizer(optim, LR, total_updates=10, warmup_updates=0, clip_scope=scope)
    return tx


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_joint_clipping_equals_clip_by_global_norm_over_the_whole_tree():
    ref = _run(optax.chain(optax.clip_by_global_norm(CLIP), _adam()))
    _close(_run(_jaxalign_tx("joint")), ref)


def test_per_model_clipping_equals_each_model_clipped_alone():
    each = optax.multi_transform({"policy": optax.chain(optax.clip_by_global_norm(CLIP), _adam()),
                                  "critic": optax.chain(optax.clip_by_global_norm(CLIP), _adam())},
                                 {"policy": "policy", "critic": "critic"})
    ref = _run(each)
    _close(_run(_jaxalign_tx("per_model")), ref)
    # ... and the two scopes really differ on these gradients (the test above could not pass
    # with the joint scope).
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), _run(_jaxalign_tx("joint"))[1],
                        ref[1])
    assert max(jax.tree.leaves(diff)) > 1e-3


def test_clip_scope_defaults_to_joint_and_bad_values_name_the_key():
    assert ppo.Config().grad_clip_scope == "joint"
    with pytest.raises(JaxalignError, match=r"ppo\.grad_clip_scope.*'both'"):
        tiny_cfg("ppo", "ppo.grad_clip_scope=both")
