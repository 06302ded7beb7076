"""PPO's pure pieces between sampling and the update: old values, score processing, per-token
rewards, GAE, and the one jitted iteration (``prepare`` + epochs over minibatches), plus the
two-model optimizer (policy and critic in one parameter tree, each with its own learning rate
and gradient clipping).

Layout: the experience rows are ``[N, P + T]`` (left-padded prompt of length ``P`` and ``T =
max_new_tokens`` completion slots, as :class:`~jaxalign.algorithms.experience.ExperienceMaker`
makes them); everything per completion token here is ``[N, T]``, the last ``T`` columns. The
value of completion token ``t`` (at column ``P + t``) is the critic's value of the state before
it, read at column ``P + t − 1``, the way log-probs are aligned.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

from jaxalign.algorithms.common import frozen_copy
from jaxalign.losses import (adaptive_kl_coef, gae, masked_mean, masked_sum, masked_var, masked_whiten,
                             normalize_and_clip, per_token_rewards, running_moments_init,
                             running_moments_std, running_moments_update)
from jaxalign.train.state import TrainState, make_minibatch_step

# Rows of the experience the update reads (the rest: scores, lengths, ... stay out of the buffer).
UPDATE_KEYS = ("input_ids", "attention_mask", "completion_mask", "old_logps")


def init_extras(kl_coef: float) -> dict:
    """PPO's checkpointed state beside the params: running score moments and the KL coefficient."""
    # Distinct buffers per leaf: the train step donates its state, and one buffer twice is an error.
    moments = frozen_copy(running_moments_init())
    return {"score_moments": moments, "kl_coef": jnp.asarray(kl_coef, jnp.float32)}


def completion_slice(x: jax.Array, t: int) -> jax.Array:
    """The last ``t`` columns (the completion slots) of an ``[N, P + T]`` array."""
    return x[:, x.shape[1] - t:]


def old_values(critic_def, critic_params, exp: dict, t: int, rows_per_chunk: int | None = None,
               remat: bool | str = False) -> jax.Array:
    """Critic values ``[N, T]`` of the rollout (the "old" values GAE and value clipping use),
    ``rows_per_chunk`` rows at a time (bounded memory)."""
    ids, attn = exp["input_ids"], exp["attention_mask"]
    n, length = ids.shape
    p = length - t

    def values(ids_c, attn_c):
        v = nnx.merge(critic_def, critic_params).token_values(ids_c, attn_c, remat=remat)
        return v[:, p - 1:length - 1]

    m = rows_per_chunk or n
    if m >= n or n % m:
        return values(ids, attn)
    out = jax.lax.map(lambda xs: values(*xs), (ids.reshape(n // m, m, length), attn.reshape(n // m, m, length)))
    return out.reshape(n, t)


def prepare(algo, exp: dict, values: jax.Array, extras: dict, t: int) -> tuple[dict, dict, dict]:
    """Scores -> processed scores -> per-token rewards -> GAE (-> whitening), pure.

    ``algo`` is the resolved ``ppo:`` section (``score_norm``, ``score_clip``, ``kl_estimator``,
    ``gamma``, ``lam``, ``whiten_advantages``, ``adaptive_kl``, ``kl_target``, ``kl_horizon``).
    The running score moments in ``extras`` absorb this batch's scores (exactly once per
    iteration: this runs once per jitted step, outside the minibatch loop), then normalise them
    when ``score_norm``. The KL coefficient used is the one in ``extras``; with ``adaptive_kl``
    the controller's new value is returned for the next iteration.

    Returns ``(buffer, new_extras, metrics)``: ``buffer`` holds the update's rows
    (:data:`UPDATE_KEYS`, ``ptx_*``) plus ``advantages``, ``returns``, ``values`` ``[N, T]``.
    """
    mask = completion_slice(exp["completion_mask"], t).astype(bool)
    old = completion_slice(exp["old_logps"], t)
    ref = completion_slice(exp["ref_logps"], t) if "ref_logps" in exp else old
    scores = exp["scores"].astype(jnp.float32)
    moments = running_moments_update(extras["score_moments"], scores)
    if algo.score_norm:
        processed = normalize_and_clip(scores, moments, clip=algo.score_clip or None)
    elif algo.score_clip:
        processed = jnp.clip(scores, -algo.score_clip, algo.score_clip)
    else:
        processed = scores
    kl_coef = extras["kl_coef"]
    rewards, _ = per_token_rewards(processed, old, ref, mask, kl_coef=kl_coef, estimator=algo.kl_estimator)
    adv, returns = gae(rewards, values, mask, gamma=algo.gamma, lam=algo.lam)
    if algo.whiten_advantages:
        adv = masked_whiten(adv, mask)
    # KL to the reference per sequence (k1 sum, the quantity the adaptive controller targets).
    kl_seq = masked_sum(old - ref, mask, axis=-1)
    new_kl = kl_coef
    if algo.adaptive_kl:
        new_kl = adaptive_kl_coef(kl_coef, jnp.mean(kl_seq), scores.shape[0], target=algo.kl_target,
                                  horizon=algo.kl_horizon)
    var_r = masked_var(returns, mask)
    metrics = {
        "kl_ref": jnp.mean(kl_seq), "kl_coef": kl_coef,
        "score/processed_mean": jnp.mean(processed), "score/processed_std": jnp.std(processed),
        "score/running_mean": moments.mean, "score/running_std": running_moments_std(moments),
        "advantages/mean": masked_mean(adv, mask), "advantages/std": jnp.sqrt(masked_var(adv, mask)),
        "returns/mean": masked_mean(returns, mask), "values/mean": masked_mean(values, mask),
        "explained_variance": jnp.where(var_r > 0, 1.0 - masked_var(returns - values, mask) / var_r, 0.0),
    }
    buffer = {k: v for k, v in exp.items() if k in UPDATE_KEYS or k.startswith("ptx_")}
    buffer.update(advantages=adv, returns=returns, values=jnp.where(mask, values, 0.0).astype(jnp.float32))
    new_extras = dict(extras, score_moments=moments, kl_coef=jnp.asarray(new_kl, jnp.float32))
    return buffer, new_extras, metrics


# --------------------------------------------------------------------------- optimizer

def _clip_each(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping of each top-level subtree (each model) on its own."""
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        return {k: clip.update(u, optax.EmptyState())[0] for k, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_gradients(max_norm: float, scope: str = "joint") -> optax.GradientTransformation:
    """Gradient clipping of the ``{"policy", "critic"}`` tree: ``joint`` bounds the global norm
    of the whole tree, ``per_model`` each top-level subtree's on its own."""
    if scope == "joint":
        return optax.clip_by_global_norm(max_norm)
    if scope == "per_model":
        return _clip_each(max_norm)
    raise ValueError(f"clip scope must be 'joint' or 'per_model', got {scope!r}")


def _scale_each(schedules: dict[str, Callable]) -> optax.GradientTransformation:
    """``−lr_k(count) · update`` for each top-level subtree ``k`` (its own learning rate)."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        out = {}
        for k, u in updates.items():
            lr = schedules[k](state.count)
            out[k] = jax.tree.map(lambda x: (-lr * x).astype(x.dtype), u)
        return out, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(optim, critic_lr: float, total_updates: int, warmup_updates: int, clip_scope: str = "joint"):
    """AdamW over ``{"policy", "critic"}`` with the gradients clipped to ``optim.grad_clip``
    (``clip_scope="joint"``: the global norm of both models' gradients together, as MOSS-RLHF's
    single engine; ``"per_model"``: each model's on its own) and each model's own schedule: the critic's over all updates (peak
    ``critic_lr``), the policy's ``0`` during the critic warm-up (its parameters do not move;
    Adam's moments still see its gradients, so its first real updates are well scaled) and
    then ``optim``'s schedule over the remaining updates.

    Returns ``(tx, policy_lr, critic_lr_fn)`` with the schedules as functions of the update count.
    """
    import dataclasses

    from jaxalign.train.optim import make_schedule

    after = make_schedule(optim, max(total_updates - warmup_updates, 1))
    critic_sched = make_schedule(dataclasses.replace(optim, lr=critic_lr), total_updates)

    def policy_lr(count):
        return jnp.where(count < warmup_updates, 0.0, after(jnp.maximum(count - warmup_updates, 0)))

    parts = []
    if optim.grad_clip is not None and optim.grad_clip > 0:
        parts.append(clip_gradients(optim.grad_clip, clip_scope))
    parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    if optim.weight_decay:
        parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(_scale_each({"policy": policy_lr, "critic": critic_sched}))
    return optax.chain(*parts), policy_lr, critic_sched


# --------------------------------------------------------------------------- the iteration

def make_step(algo, loss_fn, tx, critic_def, *, t: int, num_minibatches: int, epochs: int, n_micro: int,
              policy_lr: Callable, critic_lr: Callable, warmup_steps: int, remat: bool | str = False,
              critic_of: Callable | None = None):
    """Pure ``step(state, experience, frozen) -> (state, metrics)`` of one PPO iteration: old
    values from the critic, :func:`prepare` (running moments and KL coefficient updated once),
    then ``epochs`` passes over ``num_minibatches`` shuffled minibatches. ``critic_of(params,
    frozen)``: the critic's full params (default ``params["critic"]``; with LoRA its adapters and
    head joined to the frozen base)."""
    inner = make_minibatch_step(loss_fn, tx, num_minibatches=num_minibatches, epochs=epochs, n_micro=n_micro,
                                schedule=policy_lr)
    updates = epochs * num_minibatches

    def step(state: TrainState, exp: dict[str, Any], frozen):
        n = exp["input_ids"].shape[0]
        critic = state.params["critic"] if critic_of is None else critic_of(state.params, frozen)
        values = old_values(critic_def, critic, exp, t, n // (num_minibatches * n_micro), remat)
        buffer, extras, pre = prepare(algo, exp, jax.lax.stop_gradient(values), state.extras, t)
        new, metrics = inner(state.replace(extras=extras), buffer, frozen)
        metrics = dict(metrics, **pre)
        metrics["lr_critic"] = critic_lr((state.step + 1) * updates - 1)
        metrics["critic_warmup"] = (state.step < warmup_steps).astype(jnp.float32)
        return new, metrics

    return step
