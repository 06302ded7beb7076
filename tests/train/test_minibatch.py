"""make_minibatch_step: epochs of shuffled minibatch updates equal the same single steps run by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.train.state import TrainState, make_minibatch_step, make_train_step


def _loss(params, batch, frozen, rng, extras):
    pred = batch["x"] @ params["w"] + params["b"]
    err = (pred - batch["y"]) ** 2
    return jnp.mean(err), (jnp.float32(batch["x"].shape[0]), {"mse": jnp.mean(err)}, extras)


def _setup():
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
    params = {"w": jnp.zeros((3,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    tx = optax.adam(0.1)
    return batch, params, tx


def test_one_minibatch_one_epoch_is_the_plain_step():
    batch, params, tx = _setup()
    s0 = TrainState.create(params, tx, 0)
    a, ma = jax.jit(make_minibatch_step(_loss, tx, num_minibatches=1))(s0, batch, None)
    b, mb = jax.jit(make_train_step(_loss, tx))(TrainState.create(params, tx, 0), batch, None)
    for k in params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-6, atol=1e-7)
    assert int(a.step) == int(b.step) == 1


def test_epochs_of_minibatches_equal_sequential_steps():
    batch, params, tx = _setup()
    s0 = TrainState.create(params, tx, 0)
    new, metrics = jax.jit(make_minibatch_step(_loss, tx, num_minibatches=2, epochs=2))(s0, batch, None)
    assert int(new.step) == 1
    # By hand: the same permutations, four single updates.
    key = jax.random.fold_in(jax.random.wrap_key_data(s0.rng), 0x3B)
    single = jax.jit(make_train_step(_loss, tx))
    s = TrainState.create(params, tx, 0)
    mses = []
    for ekey in jax.random.split(key, 2):
        perm = np.asarray(jax.random.permutation(ekey, 8))
        for half in (perm[:4], perm[4:]):
            step_before = s.step
            s, m = single(s, {k: v[half] for k, v in batch.items()}, None)
            s = s.replace(step=step_before)
            mses.append(float(m["mse"]))
    for k in params:
        np.testing.assert_allclose(new.params[k], s.params[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["mse"]), np.mean(mses), rtol=1e-5)
    # Four updates moved the parameters further than one would.
    one, _ = jax.jit(make_train_step(_loss, tx))(TrainState.create(params, tx, 0), batch, None)
    assert float(jnp.abs(new.params["w"]).sum()) > float(jnp.abs(one.params["w"]).sum())
