"""TrainState pytree and the one pure train step every algorithm shares.

An algorithm supplies only a loss::

    loss_fn(params, batch, frozen, rng, extras) -> (loss, (weight, metrics, new_extras))

``loss`` is a mean over ``weight`` units (tokens, pairs, sequences) of the micro-batch.
:func:`make_train_step` splits the global batch into micro-batches with ``lax.scan``,
accumulates ``weight``-weighted gradients and metrics, and divides by the total weight, so
gradient accumulation gives exactly the gradient of the large batch; ``extras`` pass through
the micro-batches in order (each sees the previous one's). ``frozen`` holds arrays
that are inputs but not trained or checkpointed (the reference policy, a reward model).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step, trainable params, optimizer state, PRNG key (raw uint32 data), algorithm extras,
    and the number of consecutive steps skipped for non-finite values."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extras: Any
    bad_steps: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, seed: int, extras=None) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
            extras={} if extras is None else extras,
            bad_steps=jnp.zeros((), jnp.int32),
        )


# optax >= 0.2.5 spells it optax.tree.norm; global_norm is deprecated there.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm

def _all_finite(tree) -> jax.Array:
    return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
                           jnp.bool_(True))


LossFn = Callable[..., tuple[jax.Array, tuple[jax.Array, dict, Any]]]


def split_micro(batch, n_micro: int):
    """Reshape every ``[B, ...]`` leaf to ``[n_micro, B // n_micro, ...]``."""
    def f(x):
        if x.shape[0] % n_micro:
            raise ValueError(f"batch of {x.shape[0]} does not split into {n_micro} micro-batches")
        return x.reshape((n_micro, x.shape[0] // n_micro) + x.shape[1:])
    return jax.tree.map(f, batch)


def accumulate(loss_fn: LossFn, params, batch, frozen, rng, extras, n_micro: int, with_grad=True):
    """Weighted sums over micro-batches -> (mean grads or None, mean metrics incl. loss, extras).

    ``extras`` are threaded through the micro-batches in order: each micro-batch's loss sees the
    extras the previous one returned, so state that takes in every example (BCO's running
    reward mean) ends the step the same for any number of micro-batches, as a gradient-accumulating
    PyTorch loop that updates it in every forward would.
    """
    from jaxalign.models.fsdp import micro_rows_split

    micro = micro_rows_split(split_micro(batch, n_micro)) if n_micro > 1 else split_micro(batch, n_micro)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def one(mb, key, extras):
        if with_grad:
            (loss, (w, metrics, new_extras)), g = value_and_grad(params, mb, frozen, key, extras)
        else:
            loss, (w, metrics, new_extras) = loss_fn(params, mb, frozen, key, extras)
            g = None
        metrics = dict(metrics, loss=loss)
        w = jnp.asarray(w, jnp.float32)
        weighted = jax.tree.map(lambda x: x * w, (g, metrics))
        return weighted, w, new_extras

    keys = jax.random.split(rng, n_micro)
    first = jax.tree.map(lambda x: x[0], micro)
    (g0, m0), w0, e0 = one(first, keys[0], extras)
    if n_micro == 1:
        total_g, total_m, total_w, new_extras = g0, m0, w0, e0
    else:
        def body(carry, xs):
            (g, m), w, e = carry
            mb, key = xs
            (g1, m1), w1, e1 = one(mb, key, e)
            return ((jax.tree.map(jnp.add, g, g1), jax.tree.map(jnp.add, m, m1)), w + w1, e1), None

        rest = jax.tree.map(lambda x: x[1:], micro)
        ((total_g, total_m), total_w, new_extras), _ = jax.lax.scan(body, ((g0, m0), w0, e0), (rest, keys[1:]))
    denom = jnp.maximum(total_w, 1e-12)
    grads = None if total_g is None else jax.tree.map(lambda x: x / denom, total_g)
    metrics = jax.tree.map(lambda x: x / denom, total_m)
    return grads, metrics, new_extras


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, n_micro: int = 1,
                    schedule: optax.Schedule | None = None):
    """Pure ``step(state, batch, frozen) -> (state, metrics)``; jit it with explicit shardings.

    Metrics: the loss function's own (weight-averaged), plus ``loss``, ``grad_norm``, ``lr``
    and ``skipped`` (1 when a non-finite loss, gradient or updated parameter made the step skip
    its update).
    """

    def step(state: TrainState, batch, frozen):
        key = jax.random.wrap_key_data(state.rng)
        key, sub = jax.random.split(key)
        grads, metrics, new_extras = accumulate(loss_fn, state.params, batch, frozen,
                                                jax.random.fold_in(sub, state.step), state.extras, n_micro)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = _global_norm(grads)
        # Non-finite guard: a NaN/Inf loss or gradient, or an update that overflows a parameter,
        # skips the update (params, optimizer state and extras stay as they were), so a
        # checkpoint never holds non-finite values.
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & _all_finite(params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        new_extras = keep(new_extras, state.extras)
        metrics = dict(metrics, grad_norm=grad_norm, skipped=1.0 - ok.astype(jnp.float32))
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  rng=jax.random.key_data(key), extras=new_extras,
                                  bad_steps=jnp.where(ok, 0, state.bad_steps + 1))
        return new_state, metrics

    return step


def make_eval_step(loss_fn: LossFn, n_micro: int = 1):
    """Pure ``eval_step(state, batch, frozen) -> metrics`` (no update; deterministic key)."""

    def eval_step(state: TrainState, batch, frozen):
        key = jax.random.key(0)
        _, metrics, _ = accumulate(loss_fn, state.params, batch, frozen, key, state.extras, n_micro,
                                   with_grad=False)
        return metrics

    return eval_step


def make_minibatch_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, num_minibatches: int,
                        epochs: int = 1, n_micro: int = 1, schedule: optax.Schedule | None = None):
    """Pure ``step(state, batch, frozen) -> (state, metrics)`` that makes ``epochs`` passes over
    ``batch`` in ``num_minibatches`` shuffled minibatches, one optimizer update each (PPO's
    inner loop; RAFT's fine-tuning pass) — all inside one jitted call.

    ``state.step`` still advances by one (it counts loop iterations, as checkpoints and logs do);
    the optimizer makes ``epochs * num_minibatches`` updates, so build its schedule over
    ``total_iterations * epochs * num_minibatches`` updates. Metrics are means over the updates
    (``lr`` is the rate of the last update; ``updates`` counts the updates applied, skipped
    non-finite ones excluded). The shuffles come from the state's key.
    """
    single = make_train_step(loss_fn, tx, n_micro, None)
    updates = epochs * num_minibatches

    def step(state: TrainState, batch, frozen):
        n = jax.tree.leaves(batch)[0].shape[0]
        if n % num_minibatches:
            raise ValueError(f"a batch of {n} rows does not split into {num_minibatches} minibatches")
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0x3B)

        def epoch(s, ekey):
            perm = jax.random.permutation(ekey, n)
            mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, n // num_minibatches) + x.shape[1:]),
                               batch)

            def one(s2, mb):
                # Keep the iteration count fixed inside: only the outer call advances it.
                s3, m = single(s2, mb, frozen)
                return s3.replace(step=s2.step), m

            return jax.lax.scan(one, s, mbs)

        new, metrics = jax.lax.scan(epoch, state, jax.random.split(key, epochs))
        # Counted, not configured: a non-finite update that was skipped is not an update.
        applied = jnp.sum(1.0 - metrics["skipped"])
        metrics = jax.tree.map(lambda x: jnp.mean(x), metrics)
        metrics["updates"] = applied
        if schedule is not None:
            metrics["lr"] = schedule((state.step + 1) * updates - 1)
        return new.replace(step=state.step + 1), metrics

    return step


def frozen_copy(tree):
    """Fresh buffers with equal values, on the same shardings (committed or not), leaf by leaf.

    The one way the package copies parameters it must keep: the train step donates its state,
    so a reference model (or a critic started from the policy, or any extras leaf that could
    alias another) sharing the policy's buffers would be invalidated by the first step.
    """
    def copy(x):
        if isinstance(x, jax.ShapeDtypeStruct):  # an abstract build (jaxalign plan): no buffer to copy
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # A multi-process array: only its own sharding names where its shards live.
            return jax.device_put(x, x.sharding, may_alias=False)
        return jax.device_put(x, may_alias=False)

    return jax.tree.map(copy, tree)
