"""``train.compile``: the state and step the loop runs, shared by ``jaxalign plan``, the
benchmarks and the tests — optimizer moments placed like their parameters, the rest
replicated, and the state donated to the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import parallel
from jaxalign.train.compile import compile_step, init_state, shardings_of
from jaxalign.train.job import Job

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _loss(params, batch, frozen, rng, extras):
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err ** 2), (jnp.float32(batch["x"].shape[0]), {}, extras)


@needs8
def test_moments_follow_their_params_and_the_state_is_donated():
    mesh = parallel.make_mesh((1, 8, 1))
    w = jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("fsdp", None)))
    tx = optax.adam(1e-2)
    job = Job(params={"w": w}, loss_fn=_loss, tx=tx, schedule=None, total_steps=1, train_batches=iter(()),
              mesh=mesh)
    state = init_state(job, seed=3)
    mu = state.opt_state[0].mu["w"]
    assert mu.sharding.spec == P("fsdp", None) and state.step.sharding.spec == P()
    assert jnp.array_equal(jax.random.key_data(jax.random.key(3)), state.rng)
    batch = parallel.global_batch({"x": jnp.ones((8, 16)), "y": jnp.zeros((8, 4))}, mesh)
    step = compile_step(job, state)
    new, metrics = step(state, batch, None)
    assert state.params["w"].is_deleted()  # donated: no second copy of the state
    assert shardings_of(new.params)["w"].spec == P("fsdp", None) and int(new.step) == 1
    assert float(metrics["loss"]) == pytest.approx(16.0 ** 2)  # every x @ w = 16, y = 0
