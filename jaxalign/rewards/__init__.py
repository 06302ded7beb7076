"""Reward functions for the online algorithms: a reward model trained by ``jaxalign rm``, any
Python callable ``(prompts, completions, **columns) -> scores``, or a built-in (sentiment,
length, keyword, math), alone or as a weighted sum of several.

``build_reward(RewardConfig, tokenizer)`` returns a :class:`Reward` (a list of configs: a
:class:`RewardSum`); calling it on the decoded prompts and completions (and the token arrays, for
a reward model; the prompt rows' other columns, for a reward that reads them) gives one float32
score per completion. See :class:`RewardConfig` for the ``reward:`` config section.
"""

from jaxalign.rewards.base import (Reward, RewardConfig, RewardSum, build_reward, component_names,
                                   reward_entries, reward_model_path, validate_reward)
from jaxalign.rewards.functions import keyword_reward, length_reward, load_callable, sentiment_reward
from jaxalign.rewards.math import math_reward

__all__ = ["Reward", "RewardConfig", "RewardSum", "build_reward", "component_names", "keyword_reward",
           "length_reward", "load_callable", "math_reward", "reward_entries", "reward_model_path",
           "sentiment_reward", "validate_reward"]
