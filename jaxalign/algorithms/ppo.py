"""PPO with the PPO-max recipe (MOSS-RLHF, arXiv:2307.04964; ALGORITHMS.md §5) and a vanilla
preset. ``jaxalign ppo --config configs/ppo_tiny.yaml`` (``ppo.preset=vanilla`` to compare).

One iteration (one loop step): sample ``ppo.num_generations`` completions for each of
``train.batch_size`` prompts from the current policy, score them, take reference log-probs;
then, in one jitted step, the critic's values of the rollout (old values), score processing
(running moments in ``TrainState.extras``, updated once per iteration), per-token rewards with
the KL penalty, GAE, and ``ppo_epochs`` passes over the buffer in minibatches of
``minibatch_size`` rows, each a policy (clipped surrogate) + critic (clipped value loss)
(+ PPO-ptx LM loss) update.

Trainable parameters are one tree ``{"policy": ..., "critic": ...}`` with one AdamW whose
learning rate is per model and whose gradient clipping is joint (or per model) (see :func:`ppo_experience.make_optimizer`); the
critic is a :class:`~jaxalign.models.heads.ScalarHeadModel`.
"""

from __future__ import annotations


import flax.nnx as nnx
import jax.numpy as jnp

from jaxalign.algorithms import common, data_setup, online
from jaxalign.algorithms import ppo_experience as px
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.algorithms.logps import slot_token_logps
from jaxalign.losses import masked_mean, nll_loss, policy_loss, value_loss
from jaxalign.train.job import Job
from jaxalign.algorithms.sections.ppo import (  # noqa: F401 (re-exported)
    CLIP_SCOPES, CRITIC_INITS, Config, PRESETS, PRESET_VALUES)


def make_loss(policy_def, critic_def, algo: Config, temperature: float, t: int, remat: bool | str = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` over buffer rows: clipped surrogate +
    ``vf_coef`` × clipped value loss (+ ``ptx_coef`` × LM loss on ``ptx_*`` rows); the mean is
    over completion tokens (the returned weight)."""
    use_ptx = algo.ptx_data is not None and algo.ptx_coef > 0

    def loss_fn(params, batch, frozen, rng, extras):
        ids, attn = batch["input_ids"], batch["attention_mask"]
        length = ids.shape[1]
        p = length - t
        mask = px.completion_slice(batch["completion_mask"], t).astype(bool)
        policy = nnx.merge(policy_def, params["policy"])
        hidden = policy.hidden_states(ids, attn, remat=remat)[:, p - 1:length - 1]  # predict the completion slots
        logps, entropies = slot_token_logps(policy, hidden, ids[:, p:], algo.chunk_size, temperature=temperature,
                                            n_valid=jnp.max(jnp.sum(mask, axis=-1)), with_entropy=True)
        pg, pm = policy_loss(logps, px.completion_slice(batch["old_logps"], t), batch["advantages"], mask,
                             clip_eps=algo.clip_eps)
        critic = nnx.merge(critic_def, params["critic"])
        values = critic.token_values(ids, attn, remat=remat)[:, p - 1:length - 1]
        vl, vm = value_loss(values, batch["values"], batch["returns"], mask, clip_eps=algo.value_clip or None)
        entropy = masked_mean(entropies, mask)
        loss = pg + algo.vf_coef * vl
        metrics = {"pg_loss": pg, "value_loss": vl, "clipfrac": pm["clipfrac"], "approx_kl": pm["approx_kl"],
                   "vf_clipfrac": vm["vf_clipfrac"], "value_error": vm["value_error"], "entropy": entropy}
        if use_ptx:
            from jaxalign.algorithms.sft import completion_logps

            ptx_logps, ptx_mask = completion_logps(policy, batch, prefix="ptx_", remat=remat,
                                                   chunk_size=algo.chunk_size)
            ptx, _ = nll_loss(ptx_logps, ptx_mask)
            loss = loss + algo.ptx_coef * ptx
            metrics["ptx_loss"] = ptx
        return loss, (jnp.sum(mask).astype(jnp.float32), metrics, extras)

    return loss_fn


def build_critic(cfg: RunConfig, s: online.Setup):
    """The critic as ``(graphdef, params)``: a reward model's ``ScalarHeadModel`` or the policy's
    backbone (a copy) with a zero-initialised head."""
    from jaxalign.models.heads import scalar_head_from_lm

    src = cfg.algo.critic_source()
    if src is not None:
        from jaxalign.io.hf import load_hf

        try:
            critic = load_hf(src, dtype=cfg.model.param_dtype, compute_dtype=cfg.model.dtype, mesh=s.mesh,
                             scalar_head=True)
        except (FileNotFoundError, JaxalignError) as e:
            key = "ppo.critic_path" if cfg.algo.critic_path else "ppo.reward.path"
            raise JaxalignError(f"config key {key!r}: cannot load the critic from {src}: {e}") from None
        if critic.config.vocab_size < len(s.tokenizer):
            raise JaxalignError(f"critic {src}: vocabulary of {critic.config.vocab_size} tokens is smaller than "
                                f"the policy tokenizer's {len(s.tokenizer)}; the two must share a tokenizer")
        return nnx.split(critic)
    lm = nnx.merge(s.graphdef, common.frozen_copy(s.params))
    critic = scalar_head_from_lm(lm, seed=cfg.seed)
    critic.score.weight[...] = jnp.zeros_like(critic.score.weight[...])
    return nnx.split(critic)


def build_lora_critic(cfg: RunConfig, s: online.Setup):
    """``model.lora``: the critic as ``(graphdef, params)``, the policy's backbone on the SAME frozen
    base arrays (no copy) with a second adapter set of its own (seeded ``seed + 1``) and a
    zero-initialised value head; the adapters and the head train."""
    import dataclasses

    from jaxalign.algorithms.lora import _placed
    from jaxalign.models.heads import scalar_head_from_lm
    from jaxalign.models.lora import add_lora, strip_lora

    if cfg.algo.critic_source() is not None:
        raise JaxalignError("config key 'model.lora': ppo with LoRA builds its critic on the policy's frozen base; "
                            "a critic from a reward model (ppo.critic_path / ppo.critic_init) is not supported, "
                            "set ppo.critic_init: policy")
    lm = strip_lora(nnx.merge(s.graphdef, s.params))  # a new module tree on the same arrays
    spec = dataclasses.replace(cfg.model.lora, base_dtype=None, adapter=None)
    _placed(add_lora(lm, spec, seed=cfg.seed + 1), s.mesh)
    critic = scalar_head_from_lm(lm, seed=cfg.seed)
    critic.score.weight[...] = jnp.zeros_like(critic.score.weight[...])
    return nnx.split(critic)


def lora_split(s: online.Setup, params) -> dict:
    """``model.lora``: the trainable part of ``{"policy", "critic"}``: the policy's adapters; the
    critic's adapters and its value head."""
    from jaxalign.models.lora import split_params

    return {"policy": split_params(params["policy"])[0],
            "critic": split_params(params["critic"], nnx.PathContains("score"))[0]}


def lora_join(trainable: dict, base) -> dict:
    """The full ``{"policy", "critic"}`` tree of :func:`lora_split`'s part on the frozen ``base``
    (the critic's backbone is the same base: one buffer per weight)."""
    from jaxalign.models.lora import join_params

    return {"policy": join_params(base, trainable["policy"]),
            "critic": join_params(nnx.State({"backbone": base}), trainable["critic"])}


class _WithPtx:
    """Prompt batches paired with PPO-ptx SFT batches; resumable as one iterator."""

    def __init__(self, prompts, ptx):
        self.prompts, self.ptx = prompts, ptx

    def __iter__(self):
        return self

    def __next__(self):
        return {"prompts": next(self.prompts), "ptx": next(self.ptx)}

    def state_dict(self):
        return {"prompts": self.prompts.state_dict(), "ptx": self.ptx.state_dict()}

    def fingerprint(self) -> str:
        return f"{self.prompts.fingerprint()}+{self.ptx.fingerprint()}"

    def load_state_dict(self, state):
        self.prompts.load_state_dict(state["prompts"])
        self.ptx.load_state_dict(state["ptx"])


def _ptx_batches(cfg: RunConfig, tok, rows: int):
    from jaxalign.data import BatchIterator, batch_kind

    examples = data_setup._load(cfg, tok, cfg.algo.ptx_data, "ppo.ptx_data")
    if batch_kind(examples[0]) != "sft":
        raise JaxalignError(f"config key 'ppo.ptx_data': {cfg.algo.ptx_data} holds {batch_kind(examples[0])!r} "
                            "data; PPO-ptx needs SFT data (prompt, completion)")
    if len(examples) < rows:
        raise JaxalignError(f"config key 'ppo.ptx_data': {len(examples)} examples, fewer than the {rows} rows "
                            "an iteration takes")
    # One padded length (data.max_length): ptx lengths do not multiply the step's compiled shapes.
    return BatchIterator(examples, rows, seed=cfg.seed, shuffle=True, drop_last=True, pad_id=tok.pad_token_id,
                         buckets=[cfg.data.max_length], max_length=cfg.data.max_length)


def spec(cfg: RunConfig) -> online.OnlineSpec:
    """PPO as an online algorithm: reference log-probs in the experience (``kl_coef > 0``), a
    critic beside the policy in the trainable tree ``{"policy", "critic"}``, its own two-model
    optimizer and iteration step (:func:`ppo_experience.make_step`), PPO-ptx rows joined to the
    experience."""
    algo: Config = cfg.algo
    rows = cfg.train.batch_size * algo.num_generations
    mb = algo.minibatch_size or rows
    n_mb, n_micro = rows // mb, mb // (cfg.train.micro_batch_size or mb)
    t = algo.sampling.max_new_tokens
    use_ptx = algo.ptx_data is not None and algo.ptx_coef > 0
    # PPO-ptx data first: its errors come before any model is built.
    ptx = _ptx_batches(cfg, common.tokenizer_from(cfg), rows) if use_ptx else None
    critic_def = None  # known once the policy is loaded (the critic may start as its copy)

    def params(s):
        nonlocal critic_def
        critic_def, critic_params = (build_critic if s.base is None else build_lora_critic)(cfg, s)
        common.say(cfg, f"ppo: preset {algo.preset}; critic from "
                        f"{algo.critic_source() or 'the policy backbone'}; {rows} rollouts per iteration, "
                        f"{n_mb} minibatch(es) x {algo.ppo_epochs} epoch(s)")
        return {"policy": s.params, "critic": critic_params}

    def make_step(s, loss_fn, total):
        updates = algo.ppo_epochs * n_mb
        tx, policy_lr, critic_lr = px.make_optimizer(cfg.optim, algo.critic_lr or cfg.optim.lr, total * updates,
                                                     algo.critic_warmup_steps * updates,
                                                     clip_scope=algo.grad_clip_scope)
        step_fn = px.make_step(algo, loss_fn, tx, critic_def, t=t, num_minibatches=n_mb, epochs=algo.ppo_epochs,
                               n_micro=n_micro, policy_lr=policy_lr, critic_lr=critic_lr,
                               warmup_steps=algo.critic_warmup_steps, remat=cfg.model.remat,
                               critic_of=None if s.base is None else (lambda p, frozen: lora_join(p, frozen[0])["critic"]))
        return tx, policy_lr, step_fn

    def with_ptx(exp, metrics, batch):
        exp.update({"ptx_" + k: v for k, v in batch["ptx"].items()
                    if k in ("input_ids", "attention_mask", "completion_mask")})
        return exp, metrics

    ptx_hooks = dict(to_batch=with_ptx, train_batches=lambda s: _WithPtx(s.prompts, ptx),
                     prompts_of=lambda b: b["prompts"]) if use_ptx else {}
    return online.OnlineSpec(
        sampling=algo.sampling, reward=algo.reward, samples_per_prompt=algo.num_generations,
        reference="logps" if algo.kl_coef > 0 else None,
        make_loss=lambda s: make_loss(s.graphdef, critic_def, algo, algo.sampling.temperature, t, cfg.model.remat),
        extras=px.init_extras(algo.kl_coef), params=params, policy=lambda p: p["policy"], make_step=make_step,
        n_micro=n_micro, lora_split=lora_split, lora_join=lora_join, **ptx_hooks)


def build_job(cfg: RunConfig) -> Job:
    """Prompts, policy, reference, reward, critic and the PPO iteration as an online job."""
    return online.job(cfg, spec(cfg))
