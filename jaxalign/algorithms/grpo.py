"""GRPO and RLOO: critic-free policy optimisation from groups of samples per prompt
(ALGORITHMS.md §6). ``jaxalign grpo --config configs/grpo_tiny.yaml`` (``grpo.advantage: rloo``
for RLOO).

Each step: take a batch of prompts, draw ``num_generations`` completions of each from the current
policy, score them, compute group advantages, and take one clipped policy-gradient step
(``num_generations`` rows per prompt in the loss, so ``train.batch_size`` counts prompts).
"""

from __future__ import annotations


import flax.nnx as nnx
import jax

from jaxalign.algorithms import online
from jaxalign.algorithms.experience import DynamicSampling, OverlongPenalty
from jaxalign.config import RunConfig
from jaxalign.algorithms.logps import completion_token_logps
from jaxalign.losses import (group_policy_loss, grpo_advantages, kl_penalty, kl_shaped_rewards, masked_mean,
                             rloo_advantages)
from jaxalign.losses import policy_gradient as pg
from jaxalign.algorithms.sections.grpo import (  # noqa: F401 (re-exported)
    ADVANTAGES, Config, DEFAULT_BETA, DEFAULT_IMPORTANCE_SAMPLING, OverlongConfig)


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


def make_loss(graphdef, algo: Config, temperature: float, remat: bool | str = False,
              max_completion_length: int | None = None):
    """``loss_fn(params, batch, frozen, rng, extras)`` over experience rows (with ``advantages``).
    ``max_completion_length``: Dr. GRPO's constant (default ``algo.sampling.max_new_tokens``)."""
    beta, aggregation = algo.kl_coef, algo.loss_aggregation
    # RLOO puts β into the reward; only GRPO has a KL term in the loss.
    use_kl_loss = algo.advantage == "grpo" and beta > 0
    l_max = algo.sampling.max_new_tokens if max_completion_length is None else max_completion_length

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        mask = batch["completion_mask"].astype(bool)
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], remat=remat)
        logps, entropies = completion_token_logps(model, hidden, batch["input_ids"], mask, algo.chunk_size,
                                                  temperature=temperature, with_entropy=True)
        loss, m = group_policy_loss(
            logps, batch["old_logps"], batch["advantages"][:, None], mask, loss=algo.loss,
            importance_sampling=algo.ratio_level, clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
            aggregation=aggregation, max_completion_length=l_max,
            ref_logps=batch["ref_logps"] if use_kl_loss else None, beta=beta)
        entropy = masked_mean(entropies, mask)
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
