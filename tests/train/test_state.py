"""The shared train step: gradient accumulation equals one large batch; AdamW as optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.train.state import TrainState, make_eval_step, make_train_step


def weighted_loss(params, batch, frozen, rng, extras):
    # Token-mean squared error over a ragged mask: mean over *this* micro-batch's tokens.
    pred = batch["x"] @ params["w"]
    err = (pred - batch["y"]) ** 2 * batch["mask"]
    n = batch["mask"].sum()
    return err.sum() / n, (n, {"n": n}, extras)


def _batch(seed=0, b=8, t=5):
    rng = np.random.default_rng(seed)
    mask = (rng.random((b, t)) < 0.6).astype(np.float32)
    mask[:, 0] = 1
    return {"x": rng.normal(size=(b, t, 3)).astype(np.float32),
            "y": rng.normal(size=(b, t)).astype(np.float32), "mask": mask}


@pytest.mark.parametrize("n_micro", [2, 4, 8])
def test_accumulated_gradient_equals_large_batch(n_micro):
    params = {"w": jnp.array([0.3, -0.2, 0.5])}
    batch = _batch()
    tx = optax.sgd(1.0)
    big = make_train_step(weighted_loss, tx, 1)
    acc = make_train_step(weighted_loss, tx, n_micro)
    s0 = TrainState.create(params, tx, 0)
    s1, m1 = jax.jit(big)(s0, batch, None)
    s2, m2 = jax.jit(acc)(s0, batch, None)
    np.testing.assert_allclose(s1.params["w"], s2.params["w"], rtol=1e-5)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    # Closed form: grad of sum(mask*(xw-y)^2)/sum(mask) = 2 X^T (mask*(Xw-y)) / N.
    x, y, m = batch["x"].reshape(-1, 3), batch["y"].reshape(-1), batch["mask"].reshape(-1)
    g = 2 * x.T @ (m * (x @ np.array([0.3, -0.2, 0.5]) - y)) / m.sum()
    np.testing.assert_allclose(s1.params["w"], np.array([0.3, -0.2, 0.5]) - g, rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], np.linalg.norm(g), rtol=1e-5)
    assert int(s2.step) == 1


def test_eval_step_does_not_update():
    params = {"w": jnp.array([0.3, -0.2, 0.5])}
    tx = optax.adamw(1e-2)
    s0 = TrainState.create(params, tx, 0)
    m = jax.jit(make_eval_step(weighted_loss, 2))(s0, _batch(1), None)
    big = make_train_step(weighted_loss, tx, 1)
    _, m_train = big(s0, _batch(1), None)
    np.testing.assert_allclose(m["loss"], m_train["loss"], rtol=1e-6)


def test_rng_advances_deterministically():
    def noisy(params, batch, frozen, rng, extras):
        return jnp.sum(params["w"]) * jax.random.normal(rng), (1.0, {}, extras)

    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(noisy, tx, 1))
    batch = {"x": jnp.zeros((1,))}

    def losses(seed, n=3):
        state, out = TrainState.create({"w": jnp.ones(2)}, tx, seed=seed), []
        for _ in range(n):
            state, m = step(state, batch, None)
            out.append(float(m["loss"]))
        return out

    a, b, c = losses(7), losses(7), losses(8)
    assert a == b  # same seed, same draws
    assert len(set(a)) == 3  # a new key every step
    assert a != c


def test_nonfinite_step_is_skipped():
    def loss(params, batch, frozen, rng, extras):
        return jnp.sum(params["w"]) * batch["s"][0], (1.0, {}, extras)

    tx = optax.sgd(0.5)
    step = jax.jit(make_train_step(loss, tx, 1))
    s0 = TrainState.create({"w": jnp.ones(2)}, tx, 0)
    s1, m1 = step(s0, {"s": jnp.array([jnp.nan])}, None)
    np.testing.assert_array_equal(s1.params["w"], [1.0, 1.0])  # update skipped
    assert float(m1["skipped"]) == 1.0 and int(s1.bad_steps) == 1 and int(s1.step) == 1
    s2, _ = step(s1, {"s": jnp.array([jnp.inf])}, None)
    assert int(s2.bad_steps) == 2
    s3, m3 = step(s2, {"s": jnp.array([1.0])}, None)
    np.testing.assert_allclose(s3.params["w"], [0.5, 0.5])
    assert float(m3["skipped"]) == 0.0 and int(s3.bad_steps) == 0
