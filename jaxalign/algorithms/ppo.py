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

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.algorithms import common, online
from jaxalign.algorithms import ppo_experience as px
from jaxalign.algorithms.experience import SamplingConfig
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.losses import (entropy_from_logits, masked_mean, nll_loss, policy_loss, token_logprobs,
                             value_loss)
from jaxalign.losses.ppo import KL_ESTIMATORS
from jaxalign.rewards import RewardConfig, reward_model_path, validate_reward
from jaxalign.train.job import Job

PRESETS = ("ppo_max", "vanilla", "none")
CRITIC_INITS = ("auto", "reward_model", "policy")
CLIP_SCOPES = ("joint", "per_model")

# What each preset sets for the switches left unset (null). Explicit keys always win; a clip
# of 0 is off (null means "the preset's value").
PRESET_VALUES = {
    # PPO-max: score normalisation + clipping, critic from the reward model, critic warm-up,
    # clipped value loss, no advantage whitening (global grad clipping: optim.grad_clip).
    "ppo_max": dict(score_norm=True, score_clip=5.0, whiten_advantages=False, critic_init="auto",
                    critic_warmup_steps=10, value_clip=0.2, adaptive_kl=False),
    # Vanilla PPO-RLHF: raw scores, whitened advantages, critic from the policy, no warm-up.
    "vanilla": dict(score_norm=False, score_clip=0.0, whiten_advantages=True, critic_init="policy",
                    critic_warmup_steps=0, value_clip=0.2, adaptive_kl=False),
    # Nothing added: every switch off unless set.
    "none": dict(score_norm=False, score_clip=0.0, whiten_advantages=False, critic_init="policy",
                 critic_warmup_steps=0, value_clip=0.0, adaptive_kl=False),
}


@dataclasses.dataclass
class Config:
    """The ``ppo:`` section. Switches left null take the ``preset``'s value (``PRESET_VALUES``).

    preset: ``ppo_max`` (default), ``vanilla`` or ``none``.
    num_generations: completions per prompt (rollouts per iteration = train.batch_size × this).
    minibatch_size: rows per update (null: the whole buffer); ppo_epochs: passes over the buffer.
    clip_eps: policy ratio clip ε. value_clip: value clip around the old values (0: unclipped).
    vf_coef: weight of the value loss (the critic has its own optimizer slot, so this mostly
      matters through clipping).
    gamma, lam: GAE γ (1) and λ (0.95).
    kl_coef: η of the per-token penalty ``−η·KL_t`` in the reward (0: no reference model);
      kl_estimator: ``k1`` | ``k2`` | ``k3``; adaptive_kl: Ziegler's controller towards
      ``kl_target`` (per-sequence KL) over ``kl_horizon`` samples.
    score_norm: normalise scores by their running mean/std; score_clip: clip the (processed)
      scores to ±this (0: no clipping).
    whiten_advantages: whiten advantages over the buffer (vanilla PPO).
    critic_init: ``reward_model`` (from ``critic_path``, default ``reward.path`` of a ``kind:
      model`` reward), ``policy`` (the policy's backbone with a zero head) or ``auto`` (the reward
      model when there is one, else the policy).
    critic_lr: the critic's peak learning rate (null: optim.lr).
    critic_warmup_steps: iterations that train only the critic before the policy moves.
    grad_clip_scope: ``joint`` (default: ``optim.grad_clip`` bounds the global norm of the policy
      and critic gradients together, as MOSS-RLHF, whose one DeepSpeed engine holds both models)
      or ``per_model`` (each model's gradient clipped to ``optim.grad_clip`` on its own).
    ptx_data: an SFT dataset (PPO-ptx: ``ptx_coef ×`` its LM loss joins every update; as many
      rows per iteration as rollouts). Null: off.
    sampling / reward: see ``SamplingConfig`` and ``RewardConfig``.
    """

    preset: str = "ppo_max"
    num_generations: int = 1
    minibatch_size: int | None = None
    ppo_epochs: int = 1
    clip_eps: float = 0.2
    value_clip: float | None = None
    vf_coef: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    adaptive_kl: bool | None = None
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    score_norm: bool | None = None
    score_clip: float | None = None
    whiten_advantages: bool | None = None
    critic_init: str | None = None
    critic_path: str | None = None
    critic_lr: float | None = None
    critic_warmup_steps: int | None = None
    grad_clip_scope: str = "joint"
    ptx_coef: float = 1.0
    ptx_data: str | None = None
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def resolve(self) -> None:
        """Fill the switches left null from the preset (explicit values win)."""
        for k, v in PRESET_VALUES[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)

    def validate(self, cfg: RunConfig) -> None:
        if self.preset not in PRESETS:
            raise JaxalignError(f"config key 'ppo.preset': {self.preset!r} is not one of {PRESETS}")
        self.resolve()
        rows = cfg.train.batch_size * self.num_generations
        if self.num_generations < 1:
            raise JaxalignError(f"config key 'ppo.num_generations': must be >= 1, got {self.num_generations}")
        mb = self.minibatch_size if self.minibatch_size is not None else rows
        if mb <= 0 or rows % mb:
            raise JaxalignError(f"config key 'ppo.minibatch_size': {mb} must be > 0 and divide the "
                                f"{rows} rollouts per iteration (train.batch_size × ppo.num_generations)")
        micro = cfg.train.micro_batch_size
        if micro is not None and (micro <= 0 or mb % micro):
            raise JaxalignError(f"config key 'train.micro_batch_size': {micro} must be > 0 and divide "
                                f"ppo.minibatch_size ({mb} rows)")
        for key, lo in (("ppo_epochs", 1), ("critic_warmup_steps", 0)):
            if getattr(self, key) < lo:
                raise JaxalignError(f"config key 'ppo.{key}': must be >= {lo}, got {getattr(self, key)}")
        if cfg.train.steps is not None and self.critic_warmup_steps >= cfg.train.steps > 0:
            raise JaxalignError(f"config key 'ppo.critic_warmup_steps': {self.critic_warmup_steps} warm-up "
                                f"iterations leave none of the {cfg.train.steps} train.steps for the policy")
        for key in ("clip_eps", "critic_lr", "kl_target", "kl_horizon"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise JaxalignError(f"config key 'ppo.{key}': must be > 0, got {v}")
        for key in ("kl_coef", "vf_coef", "ptx_coef", "value_clip", "score_clip"):
            if getattr(self, key) < 0:
                raise JaxalignError(f"config key 'ppo.{key}': must be >= 0, got {getattr(self, key)}")
        for key in ("gamma", "lam"):
            if not 0 <= getattr(self, key) <= 1:
                raise JaxalignError(f"config key 'ppo.{key}': must be in [0, 1], got {getattr(self, key)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise JaxalignError(f"config key 'ppo.kl_estimator': {self.kl_estimator!r} is not one of "
                                f"{KL_ESTIMATORS}")
        if self.adaptive_kl and self.kl_coef == 0:
            raise JaxalignError("config key 'ppo.adaptive_kl': needs ppo.kl_coef > 0 to adapt")
        if self.grad_clip_scope not in CLIP_SCOPES:
            raise JaxalignError(f"config key 'ppo.grad_clip_scope': {self.grad_clip_scope!r} is not one of "
                                f"{CLIP_SCOPES}")
        if self.critic_init not in CRITIC_INITS:
            raise JaxalignError(f"config key 'ppo.critic_init': {self.critic_init!r} is not one of {CRITIC_INITS}")
        if self.critic_init == "reward_model" and not self.critic_source():
            raise JaxalignError("config key 'ppo.critic_init': 'reward_model' needs ppo.critic_path or a "
                                "reward model (ppo.reward.kind: model with ppo.reward.path)")
        self.sampling.validate("ppo.sampling")
        validate_reward(self.reward, "ppo.reward")

    def critic_source(self) -> str | None:
        """The reward-model directory the critic starts from, or None (the policy's backbone)."""
        if self.critic_init == "policy":
            return None
        if self.critic_path:
            return self.critic_path
        return reward_model_path(self.reward)



def make_loss(policy_def, critic_def, algo: Config, temperature: float, t: int, remat: bool = False):
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
        logits = policy(ids, attn, remat=remat)[:, p - 1:length - 1]  # predict the completion slots
        logps = token_logprobs(logits, ids[:, p:], temperature=temperature)
        pg, pm = policy_loss(logps, px.completion_slice(batch["old_logps"], t), batch["advantages"], mask,
                             clip_eps=algo.clip_eps)
        critic = nnx.merge(critic_def, params["critic"])
        values = critic.token_values(ids, attn, remat=remat)[:, p - 1:length - 1]
        vl, vm = value_loss(values, batch["values"], batch["returns"], mask, clip_eps=algo.value_clip or None)
        entropy = masked_mean(entropy_from_logits(jax.lax.stop_gradient(logits), temperature=temperature), mask)
        loss = pg + algo.vf_coef * vl
        metrics = {"pg_loss": pg, "value_loss": vl, "clipfrac": pm["clipfrac"], "approx_kl": pm["approx_kl"],
                   "vf_clipfrac": vm["vf_clipfrac"], "value_error": vm["value_error"], "entropy": entropy}
        if use_ptx:
            from jaxalign.algorithms.sft import completion_logps

            ptx_logps, ptx_mask = completion_logps(policy, batch, prefix="ptx_", remat=remat)
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

    examples = common._load(cfg, tok, cfg.algo.ptx_data, "ppo.ptx_data")
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
        critic_def, critic_params = build_critic(cfg, s)
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
                               warmup_steps=algo.critic_warmup_steps, remat=cfg.model.remat)
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
        n_micro=n_micro, **ptx_hooks)


def build_job(cfg: RunConfig) -> Job:
    """Prompts, policy, reference, reward, critic and the PPO iteration as an online job."""
    return online.job(cfg, spec(cfg))
