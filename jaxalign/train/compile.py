"""From a :class:`~jaxalign.train.job.Job` to a placed train state and a compiled step, the way
the loop does it; ``jaxalign plan``, the benchmarks and the tests use the same functions, so
they measure and test the program that training runs."""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.train.job import Job
from jaxalign.train.state import TrainState, make_train_step


def state_shardings(state: TrainState, mesh, tx) -> TrainState:
    """Shardings of a train state: params keep their own, optimizer moments take their
    param's, everything else (step, key, extras, counters) is replicated."""
    replicated = NamedSharding(mesh, P())

    def own(x):
        s = getattr(x, "sharding", None)
        return s if isinstance(s, NamedSharding) and s.mesh == mesh else replicated

    params_sh = jax.tree.map(own, state.params)
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, state.opt_state, params_sh,
        transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated,
                      extras=jax.tree.map(lambda _: replicated, state.extras), bad_steps=replicated)


def shardings_of(tree):
    """The ``.sharding`` of every array of ``tree``."""
    return jax.tree.map(lambda x: x.sharding, tree)


def init_state(job: Job, seed: int = 0) -> TrainState:
    """The job's initial :class:`TrainState` (optimizer state, the run's key from ``seed``,
    extras) placed on its shardings over ``job.mesh``."""
    state = TrainState.create(job.params, job.tx, seed, job.extras)
    return jax.device_put(state, state_shardings(state, job.mesh, job.tx))


def make_step(job: Job):
    """The job's pure ``step(state, batch, frozen) -> (state, metrics)``: its own
    ``step_fn``, or the shared one-update step over ``n_micro`` micro-batches."""
    from jaxalign.parallel.fsdp import traced_with

    # FSDP: each weight gathered where it is used, activations split by rows (models/fsdp.py).
    return traced_with(job.step_fn or make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule), job.mesh)


def compile_step(job: Job, state: TrainState):
    """The jitted step as the loop runs it: the state keeps its shardings and is donated.
    (Compiled on first call or by ``.lower(...).compile()``, as the memory preflight does.)"""
    return jax.jit(make_step(job), out_shardings=(shardings_of(state), None), donate_argnums=(0,))
