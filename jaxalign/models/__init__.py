"""Decoder-only LMs in flax.nnx (Llama, Mistral, Qwen2/3, Gemma 2/3 text), and scalar heads
(reward model, critic)."""

from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import CausalLM, KVCache, init_model

__all__ = ["CausalLM", "KVCache", "ModelConfig", "init_model"]
