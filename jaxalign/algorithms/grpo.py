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
import jax.numpy as jnp

from jaxalign.algorithms import online
from jaxalign.algorithms.experience import SamplingConfig
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.losses import (entropy_from_logits, grpo_advantages, kl_penalty, kl_shaped_rewards, masked_mean,
                             policy_loss, rloo_advantages, shifted_token_logprobs)
from jaxalign.rewards import RewardConfig, validate_reward

ADVANTAGES = ("grpo", "rloo")


@dataclasses.dataclass
class Config:
    """The ``grpo:`` section.

    advantage: ``grpo`` (``(r − mean_G r)/(std_G r + 1e-4)``) or ``rloo`` (``r − mean_{j≠i} r_j``
      on the KL-shaped reward ``r − β Σ_t (logp_old − ref)``).
    num_generations: G, completions per prompt (>= 2).
    beta: KL coefficient (GRPO: ``β·k3`` per token in the loss, default 0 = no reference model
      in memory; RLOO: the reward shaping).
    scale_rewards: GRPO's divisor: ``group`` std, ``batch`` std, or ``none`` (Dr. GRPO).
    clip_eps: PPO clip range ε. aggregation: ``token_mean`` or ``sequence_mean`` of the loss.
    sampling / reward: see ``SamplingConfig`` and ``RewardConfig``.
    """

    advantage: str = "grpo"
    num_generations: int = 4
    beta: float = 0.0
    scale_rewards: str = "group"
    clip_eps: float = 0.2
    aggregation: str = "token_mean"
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def validate(self, cfg: RunConfig) -> None:
        if self.advantage not in ADVANTAGES:
            raise JaxalignError(f"config key 'grpo.advantage': {self.advantage!r} is not one of {ADVANTAGES}")
        if self.num_generations < 2:
            raise JaxalignError(f"config key 'grpo.num_generations': needs >= 2 completions per prompt "
                                f"for a group baseline, got {self.num_generations}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise JaxalignError(f"config key 'grpo.scale_rewards': {self.scale_rewards!r} is not one of "
                                "('group', 'batch', 'none')")
        if self.aggregation not in ("token_mean", "sequence_mean"):
            raise JaxalignError(f"config key 'grpo.aggregation': {self.aggregation!r} is not one of "
                                "('token_mean', 'sequence_mean')")
        if self.beta < 0:
            raise JaxalignError(f"config key 'grpo.beta': must be >= 0, got {self.beta}")
        if self.clip_eps <= 0:
            raise JaxalignError(f"config key 'grpo.clip_eps': must be > 0, got {self.clip_eps}")
        self.sampling.validate("grpo.sampling")
        validate_reward(self.reward, "grpo.reward")



def advantages(algo: Config, exp: dict) -> jax.Array:
    """Per-completion advantages ``[N·G]`` from the experience's scores (pure)."""
    g = algo.num_generations
    scores = exp["scores"]
    if algo.advantage == "rloo":
        if "ref_logps" in exp:
            scores = kl_shaped_rewards(scores, exp["old_logps"], exp["ref_logps"], exp["completion_mask"],
                                       kl_coef=algo.beta)
        return rloo_advantages(scores.reshape(-1, g)).reshape(-1)
    return grpo_advantages(scores.reshape(-1, g), scale=algo.scale_rewards).reshape(-1)


def make_loss(graphdef, algo: Config, temperature: float, remat: bool = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` over experience rows (with ``advantages``)."""
    use_kl_loss = algo.advantage == "grpo" and algo.beta > 0

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        logits = model(batch["input_ids"], batch["attention_mask"], remat=remat)
        logps = shifted_token_logprobs(logits, batch["input_ids"], temperature=temperature)
        mask = batch["completion_mask"].astype(bool)
        loss, m = policy_loss(logps, batch["old_logps"], batch["advantages"][:, None], mask,
                              clip_eps=algo.clip_eps, aggregation=algo.aggregation)
        entropy = masked_mean(entropy_from_logits(jax.lax.stop_gradient(logits), temperature=temperature,
                                                  shifted=True), mask)
        metrics = {"clipfrac": m["clipfrac"], "approx_kl": m["approx_kl"], "entropy": entropy}
        if "ref_logps" in batch:
            kl = masked_mean(kl_penalty(jax.lax.stop_gradient(logps), batch["ref_logps"], "k3"), mask)
            metrics["kl_ref"] = kl
        if use_kl_loss:
            k3 = kl_penalty(logps, batch["ref_logps"], "k3")
            kl_term = (masked_mean(k3, mask) if algo.aggregation == "token_mean"
                       else jnp.mean(masked_mean(k3, mask, axis=-1)))
            loss = loss + algo.beta * kl_term
        weight = (jnp.sum(mask) if algo.aggregation == "token_mean" else mask.shape[0]) * 1.0
        return loss, (weight, metrics, extras)

    return loss_fn


def spec(cfg: RunConfig) -> online.OnlineSpec:
    """GRPO/RLOO as an online algorithm: G samples per prompt, reference log-probs in the
    experience when ``beta > 0``, group advantages added to the experience rows."""
    algo: Config = cfg.algo

    @jax.jit
    def to_rows(exp):
        return dict(exp, advantages=advantages(algo, exp))

    return online.OnlineSpec(
        sampling=algo.sampling, reward=algo.reward, samples_per_prompt=algo.num_generations,
        reference="logps" if algo.beta > 0 else None,
        make_loss=lambda s: make_loss(s.graphdef, algo, algo.sampling.temperature, cfg.model.remat),
        to_batch=lambda exp, metrics, batch: (to_rows(exp), metrics), rows_per_prompt=algo.num_generations)


def build_job(cfg: RunConfig):
    """Prompts, policy, (reference), reward and the GRPO/RLOO loss as an online job."""
    return online.job(cfg, spec(cfg))
