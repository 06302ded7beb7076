"""Llama-family models in flax.nnx, and scalar heads (reward model, critic).

The names are imported on first use (PEP 562): the config checks read
:mod:`jaxalign.models.config` without loading Flax through :mod:`jaxalign.models.llama`.
"""

from jaxalign.models.config import ModelConfig

__all__ = ["CausalLM", "KVCache", "ModelConfig", "init_model"]

_LAZY = ("CausalLM", "KVCache", "init_model")


def __getattr__(name):
    if name in _LAZY:
        from jaxalign.models import llama

        value = getattr(llama, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxalign.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
