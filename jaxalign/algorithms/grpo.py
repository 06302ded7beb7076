"""GRPO and RLOO: critic-free policy optimisation from groups of samples per prompt
(ALGORITHMS.md §6). ``jaxalign grpo --config configs/grpo_tiny.yaml`` (``grpo.advantage: rloo``
for RLOO).

Each step: take a batch of prompts, draw ``num_generations`` completions of each from the current
policy, score them, compute group advantages, and take one clipped policy-gradient step
(``num_generations`` rows per prompt in the loss, so ``train.batch_size`` counts prompts).
"""

from __future__ import annotations

import dataclasses

import flax.nnx as nnx
import jax

from jaxalign.algorithms import online
from jaxalign.algorithms.experience import DynamicSampling, OverlongPenalty, SamplingConfig
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.losses import (entropy_from_logits, group_policy_loss, grpo_advantages, kl_penalty, kl_shaped_rewards,
                             masked_mean, rloo_advantages, shifted_token_logprobs)
from jaxalign.losses import policy_gradient as pg
from jaxalign.rewards import RewardConfig, validate_reward

ADVANTAGES = ("grpo", "rloo")
# TRL's defaults: GRPOTrainer's beta is 0 (no reference model), RLOOTrainer's 0.05.
DEFAULT_BETA = {"grpo": 0.0, "rloo": 0.05}
# RLOO's importance ratio is one per sequence, exp(Σ_t log π/π_old), as TRL's RLOOTrainer.
DEFAULT_IMPORTANCE_SAMPLING = {"grpo": "token", "rloo": "sequence_sum"}


@dataclasses.dataclass
class OverlongConfig:
    """``grpo.overlong``: DAPO's soft overlong punishment, added to the reward (arXiv:2503.14476
    eq. 13): 0 up to ``max_length − buffer`` completion tokens, then linearly to −1 at
    ``max_length``, −1 beyond. ``max_length`` None: ``sampling.max_new_tokens``."""

    buffer: int = 4
    max_length: int | None = None

    def validate(self, max_new_tokens: int) -> None:
        top = self.max_length if self.max_length is not None else max_new_tokens
        if self.max_length is not None and self.max_length <= 0:
            raise JaxalignError(f"config key 'grpo.overlong.max_length': must be > 0, got {self.max_length}")
        if not 0 < self.buffer <= top:
            raise JaxalignError(f"config key 'grpo.overlong.buffer': must be in (0, max_length={top}], "
                                f"got {self.buffer}")


@dataclasses.dataclass
class Config:
    """The ``grpo:`` section.

    advantage: ``grpo`` (``(r − mean_G r)/(std_G r + 1e-4)``) or ``rloo`` (``r − mean_{j≠i} r_j``
      on the KL-shaped reward ``r − β Σ_t (logp_old − ref)``).
    num_generations: G, completions per prompt (>= 2).
    beta: KL coefficient; None: TRL's defaults, 0 for GRPO (no reference model in memory), 0.05
      for RLOO. GRPO: ``β·k3`` per token in the loss; RLOO: the reward shaping.
    scale_rewards: GRPO's divisor: ``group`` std, ``batch`` std, or ``none`` (Dr. GRPO).
    loss: ``clip`` (PPO's clipped surrogate) or ``cispo`` (clipped, detached IS weight times
      ``A · log π``; MiniMax-M1).
    importance_sampling: the ratio ``π/π_old``: ``token``; ``sequence`` (GSPO, length-normalised);
      ``sequence_token`` (GSPO-token); ``sequence_sum`` (``π(y)/π_old(y)``, RLOO's). None:
      ``token`` for GRPO, ``sequence_sum`` for RLOO.
    clip_eps / clip_eps_high: ε_low and ε_high of the clip (None: ε; DAPO's clip-higher: 0.28);
      CISPO truncates its weight at ``1 + clip_eps_high``.
    aggregation: TRL's ``loss_type``: ``grpo`` (per-sequence token mean, then mean over
      sequences), ``dapo`` (token mean over the batch), ``bnpo`` (token mean per micro-batch),
      ``dr_grpo`` (token sum / (sequences × max_new_tokens)); ``token_mean`` = ``dapo`` and
      ``sequence_mean`` = ``grpo`` are accepted. None: ``dapo`` for a token-level ratio (TRL's
      default), ``grpo`` for a sequence-level one (the per-sequence objective of GSPO and RLOO).
    dynamic_sampling / max_refills: DAPO's dynamic sampling: drop the groups whose rewards are
      all equal and refill with more prompts, at most ``max_refills`` extra samplings per step.
    overlong: DAPO's overlong reward shaping (see ``OverlongConfig``); None: off.
    sampling / reward: see ``SamplingConfig`` and ``RewardConfig``.
    """

    advantage: str = "grpo"
    num_generations: int = 4
    beta: float | None = None
    scale_rewards: str = "group"
    loss: str = "clip"
    importance_sampling: str | None = None
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    aggregation: str | None = None
    dynamic_sampling: bool = False
    max_refills: int = 4
    overlong: OverlongConfig | None = None
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    @property
    def kl_coef(self) -> float:
        """β, with None resolved per advantage (GRPO 0, RLOO 0.05)."""
        return DEFAULT_BETA[self.advantage] if self.beta is None else self.beta

    @property
    def ratio_level(self) -> str:
        """The importance-sampling level, with None resolved per advantage."""
        if self.importance_sampling is None:
            return DEFAULT_IMPORTANCE_SAMPLING[self.advantage]
        return self.importance_sampling

    @property
    def loss_aggregation(self) -> str:
        """TRL's name of the aggregation, with None resolved from the ratio's level."""
        if self.aggregation is None:
            return "dapo" if self.ratio_level == "token" else "grpo"
        return pg.canonical_aggregation(self.aggregation)

    def validate(self, cfg: RunConfig) -> None:
        if self.advantage not in ADVANTAGES:
            raise JaxalignError(f"config key 'grpo.advantage': {self.advantage!r} is not one of {ADVANTAGES}")
        if self.num_generations < 2:
            raise JaxalignError(f"config key 'grpo.num_generations': needs >= 2 completions per prompt "
                                f"for a group baseline, got {self.num_generations}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise JaxalignError(f"config key 'grpo.scale_rewards': {self.scale_rewards!r} is not one of "
                                "('group', 'batch', 'none')")
        if self.loss not in pg.SURROGATES:
            raise JaxalignError(f"config key 'grpo.loss': {self.loss!r} is not one of {pg.SURROGATES}")
        if self.importance_sampling is not None and self.importance_sampling not in pg.IMPORTANCE_SAMPLING:
            raise JaxalignError(f"config key 'grpo.importance_sampling': {self.importance_sampling!r} is not "
                                f"one of {pg.IMPORTANCE_SAMPLING}")
        names = pg.AGGREGATIONS + tuple(pg.AGGREGATION_ALIASES)
        if self.aggregation is not None and self.aggregation not in names:
            raise JaxalignError(f"config key 'grpo.aggregation': {self.aggregation!r} is not one of {names}")
        if self.beta is not None and self.beta < 0:
            raise JaxalignError(f"config key 'grpo.beta': must be >= 0, got {self.beta}")
        if self.clip_eps <= 0:
            raise JaxalignError(f"config key 'grpo.clip_eps': must be > 0, got {self.clip_eps}")
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            raise JaxalignError(f"config key 'grpo.clip_eps_high': must be > 0, got {self.clip_eps_high}")
        if self.max_refills < 0:
            raise JaxalignError(f"config key 'grpo.max_refills': must be >= 0, got {self.max_refills}")
        self.sampling.validate("grpo.sampling")
        validate_reward(self.reward, "grpo.reward")
        if self.overlong is not None:
            self.overlong.validate(self.sampling.max_new_tokens)


def advantages(algo: Config, exp: dict) -> jax.Array:
    """Per-completion advantages ``[N·G]`` from the experience's scores (pure)."""
    g = algo.num_generations
    scores = exp["scores"]
    if algo.advantage == "rloo":
        if "ref_logps" in exp:
            scores = kl_shaped_rewards(scores, exp["old_logps"], exp["ref_logps"], exp["completion_mask"],
                                       kl_coef=algo.kl_coef)
        return rloo_advantages(scores.reshape(-1, g)).reshape(-1)
    return grpo_advantages(scores.reshape(-1, g), scale=algo.scale_rewards).reshape(-1)


def make_loss(graphdef, algo: Config, temperature: float, remat: bool = False,
              max_completion_length: int | None = None):
    """``loss_fn(params, batch, frozen, rng, extras)`` over experience rows (with ``advantages``).
    ``max_completion_length``: Dr. GRPO's constant (default ``algo.sampling.max_new_tokens``)."""
    beta, aggregation = algo.kl_coef, algo.loss_aggregation
    # RLOO puts β into the reward; only GRPO has a KL term in the loss.
    use_kl_loss = algo.advantage == "grpo" and beta > 0
    l_max = algo.sampling.max_new_tokens if max_completion_length is None else max_completion_length

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        logits = model(batch["input_ids"], batch["attention_mask"], remat=remat)
        logps = shifted_token_logprobs(logits, batch["input_ids"], temperature=temperature)
        mask = batch["completion_mask"].astype(bool)
        loss, m = group_policy_loss(
            logps, batch["old_logps"], batch["advantages"][:, None], mask, loss=algo.loss,
            importance_sampling=algo.ratio_level, clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
            aggregation=aggregation, max_completion_length=l_max,
            ref_logps=batch["ref_logps"] if use_kl_loss else None, beta=beta)
        entropy = masked_mean(entropy_from_logits(jax.lax.stop_gradient(logits), temperature=temperature,
                                                  shifted=True), mask)
        metrics = {k: m[k] for k in ("clipfrac", "clip_low", "clip_high", "approx_kl")}
        metrics["entropy"] = entropy
        if "ref_logps" in batch:
            kl = masked_mean(kl_penalty(jax.lax.stop_gradient(logps), batch["ref_logps"], "k3"), mask)
            metrics["kl_ref"] = kl
        return loss, (pg.weight(mask, aggregation), metrics, extras)

    return loss_fn


def spec(cfg: RunConfig) -> online.OnlineSpec:
    """GRPO/RLOO as an online algorithm: G samples per prompt, reference log-probs in the
    experience when ``beta > 0``, group advantages added to the experience rows; DAPO's overlong
    shaping as a reward filter and its dynamic sampling as the experience hook."""
    algo: Config = cfg.algo

    @jax.jit
    def to_rows(exp):
        return dict(exp, advantages=advantages(algo, exp))

    overlong = None
    if algo.overlong is not None:
        top = algo.overlong.max_length or algo.sampling.max_new_tokens
        overlong = OverlongPenalty(top, algo.overlong.buffer)
    dynamic = DynamicSampling(algo.num_generations, algo.max_refills) if algo.dynamic_sampling else None
    return online.OnlineSpec(
        sampling=algo.sampling, reward=algo.reward, samples_per_prompt=algo.num_generations,
        reference="logps" if algo.kl_coef > 0 else None,
        make_loss=lambda s: make_loss(s.graphdef, algo, algo.sampling.temperature, cfg.model.remat),
        to_batch=lambda exp, metrics, batch: (to_rows(exp), metrics), rows_per_prompt=algo.num_generations,
        reward_filter=overlong, dynamic_sampling=dynamic)


def build_job(cfg: RunConfig):
    """Prompts, policy, (reference), reward and the GRPO/RLOO loss as an online job."""
    return online.job(cfg, spec(cfg))
