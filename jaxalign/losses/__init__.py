"""jaxalign.losses: pure functions of arrays for SFT, reward models, DPO, KTO, PPO, GRPO/RLOO,
RAFT and IFT.

No models, configs or I/O: every function takes arrays and returns arrays (losses return
``(scalar_loss, metrics_dict)``), checks its inputs with ``chex`` and works under ``jit``,
``vmap`` and ``grad``. String options (``loss_type``, ``estimator``, ``aggregation``, ...)
and ``chunk_size`` are static: close over them or mark them static when jitting.
"""

from jaxalign.losses.dpo import LOSS_TYPES as DPO_LOSS_TYPES
from jaxalign.losses.dpo import BCOState, bco_init, bco_update, dpo_loss
from jaxalign.losses.group import grpo_advantages, kl_shaped_rewards, rloo_advantages
from jaxalign.losses.ift import (
    ift_loss,
    ift_predicted_ids,
    ift_weights,
    temporal_residual_embeddings,
)
from jaxalign.losses.kto import LOSS_TYPES as KTO_LOSS_TYPES
from jaxalign.losses.kto import kto_kl, kto_loss
from jaxalign.losses.logprobs import (
    entropy_from_logits,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sequence_logprobs,
    shift_right,
    shifted_token_logprobs,
    token_logprobs,
)
from jaxalign.losses.policy_gradient import (
    group_policy_loss,
    log_importance_weights,
    overlong_penalty,
)
from jaxalign.losses.ppo import (
    RunningMoments,
    adaptive_kl_coef,
    gae,
    kl_penalty,
    last_token_index,
    normalize_and_clip,
    per_token_rewards,
    policy_loss,
    running_moments_init,
    running_moments_std,
    running_moments_update,
    update_and_normalize,
    value_loss,
)
from jaxalign.losses.raft import best_of_k, filter_rewards, num_top, selection_metrics, top_fraction
from jaxalign.losses.reward import (
    kwise_pairwise_loss,
    pairwise_loss,
    plackett_luce_loss,
    preference_accuracy,
    ranking_accuracy,
)
from jaxalign.losses.sft import neftune_noise, nll_loss, sft_loss

__all__ = [
    "BCOState", "DPO_LOSS_TYPES", "RunningMoments", "adaptive_kl_coef", "bco_init", "bco_update",
    "best_of_k", "dpo_loss", "entropy_from_logits", "filter_rewards", "gae", "group_policy_loss",
    "grpo_advantages", "ift_loss", "ift_predicted_ids", "ift_weights", "KTO_LOSS_TYPES", "kl_penalty",
    "kto_kl", "kto_loss",
    "kl_shaped_rewards", "kwise_pairwise_loss", "last_token_index", "log_importance_weights",
    "masked_count", "masked_mean", "masked_sum", "masked_var", "masked_whiten", "neftune_noise",
    "nll_loss", "normalize_and_clip", "num_top", "overlong_penalty", "pairwise_loss",
    "per_token_rewards", "plackett_luce_loss", "policy_loss", "preference_accuracy",
    "ranking_accuracy", "rloo_advantages", "running_moments_init", "running_moments_std",
    "running_moments_update", "selection_metrics", "sequence_logprobs", "sft_loss", "shift_right",
    "shifted_token_logprobs", "temporal_residual_embeddings", "token_logprobs", "top_fraction",
    "update_and_normalize", "value_loss",
]
