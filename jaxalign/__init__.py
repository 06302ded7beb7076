"""jaxalign: JAX-native, pure-functional alignment of language models.

Public API: :func:`load_model`, :func:`load_tokenizer`, :func:`save_model`,
:func:`forward_logits`; the pure losses live in :mod:`jaxalign.losses`.

The names below are imported on first use (PEP 562): ``import jaxalign`` itself does not load
JAX or Flax, so the ``jaxalign`` command answers ``--help`` and config errors at once and handles
a signal from its first moment.
"""

from jaxalign.errors import JaxalignError

__version__ = "0.1.0"

_LAZY = {
    "forward_logits": "jaxalign.api", "load_model": "jaxalign.api", "load_tokenizer": "jaxalign.api",
    "save_model": "jaxalign.api", "ModelConfig": "jaxalign.models.config",
    "CausalLM": "jaxalign.models.llama", "KVCache": "jaxalign.models.llama", "init_model": "jaxalign.models.llama",
}

__all__ = [
    "CausalLM", "JaxalignError", "KVCache", "ModelConfig", "forward_logits", "init_model",
    "load_model", "load_tokenizer", "save_model",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxalign' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
