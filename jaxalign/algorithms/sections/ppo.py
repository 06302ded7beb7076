"""The ``ppo:`` config section (jax-free: ``jaxalign ppo --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.ppo` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses.names import KL_ESTIMATORS
from jaxalign.algorithms.sections.sampling import SamplingConfig
from jaxalign.rewards import RewardConfig, reward_model_path, validate_reward

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

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
    kl_target, kl_horizon: the adaptive controller's target KL (per sequence) and its horizon (samples).
    score_norm: normalise scores by their running mean/std; score_clip: clip the (processed)
      scores to ±this (0: no clipping).
    whiten_advantages: whiten advantages over the buffer (vanilla PPO).
    critic_init: ``reward_model`` (from ``critic_path``, default ``reward.path`` of a ``kind:
      model`` reward), ``policy`` (the policy's backbone with a zero head) or ``auto`` (the reward
      model when there is one, else the policy).
    critic_path: the reward model the critic starts from; default: ``reward.path`` of a model reward.
    critic_lr: the critic's peak learning rate (null: optim.lr).
    critic_warmup_steps: iterations that train only the critic before the policy moves.
    grad_clip_scope: ``joint`` (default: ``optim.grad_clip`` bounds the global norm of the policy
      and critic gradients together, as MOSS-RLHF, whose one DeepSpeed engine holds both models)
      or ``per_model`` (each model's gradient clipped to ``optim.grad_clip`` on its own).
    ptx_data: an SFT dataset (PPO-ptx: ``ptx_coef ×`` its LM loss joins every update; as many
      rows per iteration as rollouts). Null: off.
    ptx_coef: the weight of the PPO-ptx LM loss (with ptx_data).
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (policy, reference and PPO-ptx forwards); null: the full head at once.
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
    chunk_size: int | None = None
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def resolve(self) -> None:
        """Fill the switches left null from the preset (explicit values win)."""
        for k, v in PRESET_VALUES[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)

    def validate(self, cfg: RunConfig) -> None:
        check_chunk_size("ppo", self.chunk_size)
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
