"""jaxalign.rollout: jitted sampling from a causal LM (prefill + KV-cached decode loop).

:func:`generate` is the array-level entry point (token ids in, :class:`Rollout` out);
:func:`generate_text` wraps it with a tokenizer and chat templates.
"""

from jaxalign.rollout.arguments import DEFAULT_BUCKETS, pad_prompts, prompt_bucket_length
from jaxalign.rollout.sampler import Rollout, generate
from jaxalign.rollout.sampling import filter_logits, sample_tokens, top_k_filter, top_p_filter
from jaxalign.rollout.text import generate_text

__all__ = [
    "DEFAULT_BUCKETS", "Rollout", "prompt_bucket_length", "filter_logits", "generate", "generate_text",
    "pad_prompts", "sample_tokens", "top_k_filter", "top_p_filter",
]
