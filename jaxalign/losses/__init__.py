"""jaxalign.losses: pure functions of arrays for SFT, reward models, DPO, KTO, PPO, GRPO/RLOO,
RAFT and IFT.

No models, configs or I/O: every function takes arrays and returns arrays (losses return
``(scalar_loss, metrics_dict)``), checks its inputs with ``chex`` and works under ``jit``,
``vmap`` and ``grad``. String options (``loss_type``, ``estimator``, ``aggregation``, ...)
and ``chunk_size`` are static: close over them or mark them static when jitting.

The names are imported on first use (PEP 562), so that :mod:`jaxalign.losses.names` (the
option names the config checks read) imports no JAX.
"""

# name -> (module, name in that module)
_LAZY = {
    "DPO_LOSS_TYPES": ("dpo", "LOSS_TYPES"),
    "BCOState": ("dpo", "BCOState"),
    "bco_init": ("dpo", "bco_init"),
    "bco_update": ("dpo", "bco_update"),
    "dpo_loss": ("dpo", "dpo_loss"),
    "grpo_advantages": ("group", "grpo_advantages"),
    "completion_logprobs_from_hidden": ("head", "completion_logprobs_from_hidden"),
    "head_token_logprobs": ("head", "head_token_logprobs"),
    "kl_shaped_rewards": ("group", "kl_shaped_rewards"),
    "rloo_advantages": ("group", "rloo_advantages"),
    "ift_loss": ("ift", "ift_loss"),
    "ift_predicted_ids": ("ift", "ift_predicted_ids"),
    "ift_weights": ("ift", "ift_weights"),
    "temporal_residual_embeddings": ("ift", "temporal_residual_embeddings"),
    "KTO_LOSS_TYPES": ("kto", "LOSS_TYPES"),
    "kto_kl": ("kto", "kto_kl"),
    "kto_loss": ("kto", "kto_loss"),
    "entropy_from_logits": ("logprobs", "entropy_from_logits"),
    "masked_count": ("logprobs", "masked_count"),
    "masked_mean": ("logprobs", "masked_mean"),
    "masked_sum": ("logprobs", "masked_sum"),
    "masked_var": ("logprobs", "masked_var"),
    "masked_whiten": ("logprobs", "masked_whiten"),
    "sequence_logprobs": ("logprobs", "sequence_logprobs"),
    "shift_right": ("logprobs", "shift_right"),
    "shifted_token_logprobs": ("logprobs", "shifted_token_logprobs"),
    "token_logprobs": ("logprobs", "token_logprobs"),
    "group_policy_loss": ("policy_gradient", "group_policy_loss"),
    "log_importance_weights": ("policy_gradient", "log_importance_weights"),
    "overlong_penalty": ("policy_gradient", "overlong_penalty"),
    "RunningMoments": ("ppo", "RunningMoments"),
    "adaptive_kl_coef": ("ppo", "adaptive_kl_coef"),
    "gae": ("ppo", "gae"),
    "kl_penalty": ("ppo", "kl_penalty"),
    "last_token_index": ("ppo", "last_token_index"),
    "normalize_and_clip": ("ppo", "normalize_and_clip"),
    "per_token_rewards": ("ppo", "per_token_rewards"),
    "policy_loss": ("ppo", "policy_loss"),
    "running_moments_init": ("ppo", "running_moments_init"),
    "running_moments_std": ("ppo", "running_moments_std"),
    "running_moments_update": ("ppo", "running_moments_update"),
    "update_and_normalize": ("ppo", "update_and_normalize"),
    "value_loss": ("ppo", "value_loss"),
    "best_of_k": ("raft", "best_of_k"),
    "filter_rewards": ("raft", "filter_rewards"),
    "num_top": ("raft", "num_top"),
    "selection_metrics": ("raft", "selection_metrics"),
    "top_fraction": ("raft", "top_fraction"),
    "kwise_pairwise_loss": ("reward", "kwise_pairwise_loss"),
    "pairwise_loss": ("reward", "pairwise_loss"),
    "plackett_luce_loss": ("reward", "plackett_luce_loss"),
    "preference_accuracy": ("reward", "preference_accuracy"),
    "ranking_accuracy": ("reward", "ranking_accuracy"),
    "neftune_noise": ("sft", "neftune_noise"),
    "nll_loss": ("sft", "nll_loss"),
    "sft_loss": ("sft", "sft_loss"),
}

__all__ = [
    "BCOState", "DPO_LOSS_TYPES", "RunningMoments", "adaptive_kl_coef", "bco_init", "bco_update",
    "best_of_k", "completion_logprobs_from_hidden", "dpo_loss", "entropy_from_logits",
    "filter_rewards", "gae", "group_policy_loss", "grpo_advantages", "head_token_logprobs",
    "ift_loss", "ift_predicted_ids", "ift_weights", "KTO_LOSS_TYPES", "kl_penalty", "kto_kl",
    "kto_loss", "kl_shaped_rewards", "kwise_pairwise_loss", "last_token_index",
    "log_importance_weights", "masked_count", "masked_mean", "masked_sum", "masked_var",
    "masked_whiten", "neftune_noise", "nll_loss", "normalize_and_clip", "num_top",
    "overlong_penalty", "pairwise_loss", "per_token_rewards", "plackett_luce_loss", "policy_loss",
    "preference_accuracy", "ranking_accuracy", "rloo_advantages", "running_moments_init",
    "running_moments_std", "running_moments_update", "selection_metrics", "sequence_logprobs",
    "sft_loss", "shift_right", "shifted_token_logprobs", "temporal_residual_embeddings",
    "token_logprobs", "top_fraction", "update_and_normalize", "value_loss",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"jaxalign.losses.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxalign.losses' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
