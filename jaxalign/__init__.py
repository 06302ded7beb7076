"""jaxalign: JAX-native, pure-functional alignment of language models.

Public API: :func:`load_model`, :func:`load_tokenizer`, :func:`save_model`,
:func:`forward_logits`; the pure losses live in :mod:`jaxalign.losses`.
"""

from jaxalign.api import forward_logits, load_model, load_tokenizer, save_model
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import CausalLM, KVCache, init_model

__version__ = "0.1.0"

__all__ = [
    "CausalLM", "JaxalignError", "KVCache", "ModelConfig", "forward_logits", "init_model",
    "load_model", "load_tokenizer", "save_model",
]
