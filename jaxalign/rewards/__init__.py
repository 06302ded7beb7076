"""Reward functions for the online algorithms: a reward model trained by ``jaxalign rm``, any
Python callable ``(prompts, completions) -> scores``, or a built-in (sentiment, length, keyword).

``build_reward(RewardConfig, tokenizer)`` returns a :class:`Reward`; calling it on the decoded
prompts and completions (and the token arrays, for a reward model) gives one float32 score per
completion. See :class:`RewardConfig` for the ``reward:`` config section.
"""

from jaxalign.rewards.base import Reward, RewardConfig, build_reward
from jaxalign.rewards.functions import keyword_reward, length_reward, load_callable, sentiment_reward

__all__ = ["Reward", "RewardConfig", "build_reward", "keyword_reward", "length_reward", "load_callable",
           "sentiment_reward"]
