"""LoRA dropout (PEFT's ``lora_dropout``): ``y = W x + s * B A dropout(x)``, the mask on the
adapter's input only, in training forwards only.

The key reaches the layers through a context, not through every forward's signature: the LoRA
training loss (:func:`jaxalign.algorithms.lora.lora_job`) enters :func:`active` with the train
step's per-micro-batch key, :meth:`jaxalign.models.llama.CausalLM.hidden_states` gives each
scanned layer its own key (``split(key, layers)``), and each adapted ``Linear`` folds in its own
index (``Linear.lora_index``) to draw an independent mask. Outside the context (evaluation,
sampling, references, export) nothing is dropped. The context is read while JAX traces, so
the key is an ordinary traced value of the jitted step.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

_KEY: contextvars.ContextVar = contextvars.ContextVar("jaxalign_lora_dropout_key", default=None)


@contextlib.contextmanager
def active(key):
    """Within the block, adapted layers with ``lora_dropout > 0`` drop with ``key`` (None: off)."""
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)


def current():
    """The key in force, or None."""
    return _KEY.get()


def apply(x, rate: float, index: int):
    """``x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)`` drawn from
    ``fold_in(current(), index)``; ``x`` itself without a key in force or with ``rate == 0``."""
    key = _KEY.get()
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, index), 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
