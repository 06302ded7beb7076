"""Learning-rate schedules against their closed forms; clipping bounds the update."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.config import OptimConfig
from jaxalign.errors import JaxalignError
from jaxalign.train.optim import make_optimizer, make_schedule


def test_warmup_then_cosine():
    s = make_schedule(OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1), 110)
    assert float(s(0)) == 0.0
    assert math.isclose(float(s(5)), 0.5, rel_tol=1e-6)
    for t in (10, 35, 60, 110):
        want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 100))
        assert math.isclose(float(s(t)), want, rel_tol=1e-5), t


def test_linear_and_constant():
    lin = make_schedule(OptimConfig(lr=2.0, schedule="linear", min_lr_ratio=0.0), 100)
    assert math.isclose(float(lin(25)), 1.5, rel_tol=1e-6)
    const = make_schedule(OptimConfig(lr=3e-4, schedule="constant"), 100)
    assert math.isclose(float(const(99)), 3e-4, rel_tol=1e-6)


def test_bad_schedule_names_the_key():
    with pytest.raises(JaxalignError, match="optim.schedule"):
        make_schedule(OptimConfig(schedule="cosin"), 10)


def test_global_norm_clipping():
    tx, _ = make_optimizer(OptimConfig(lr=1.0, schedule="constant", grad_clip=1.0, b1=0.0, b2=0.0,
                                       eps=0.0), 10)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([0.0])}
    st = tx.init(params)
    upd, _ = tx.update(grads, st, params)
    # With b1=b2=0 Adam's step is sign-like: -g/|g| elementwise after clipping to norm 1.
    np.testing.assert_allclose(upd["a"], [-1.0, -1.0], rtol=1e-5)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    np.testing.assert_allclose(np.sqrt(sum(np.sum(np.square(v)) for v in clipped.values())), 1.0, rtol=1e-6)
