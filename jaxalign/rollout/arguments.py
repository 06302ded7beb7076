""":func:`jaxalign.rollout.generate`'s arguments turned into the jitted sampler's inputs: prompt
bucketing and padding, the checks that give one-line errors, the static sampling spec, the key.

Kept apart from the sampler (``sampler.py``: the traced prefill and decode loop) because this
is all host-side numpy and Python, and :func:`jaxalign.rollout.sampler.lower_generate` (the
memory plan) must build exactly the same spec and shapes as a real call.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data.batching import bucket_length
from jaxalign.errors import JaxalignError

# Prompt lengths are left-padded up to one of these, so prompts of similar length share a
# compiled program; longer prompts round up to a multiple of the largest bucket. Powers of two
# and 1.5x powers of two: at most 1/3 of a prefill is padding (powers of two alone: up to 1/2;
# a 47-token prompt batch padded to 64 spent a quarter of its prefill on padding).
DEFAULT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """The static part of a sampling configuration (part of the jit cache key)."""

    max_new_tokens: int
    num_samples: int
    greedy: bool
    top_k: int | None
    use_top_p: bool
    n_eos: int


def sampling_spec(*, max_new_tokens: int, num_samples: int, temperature: float, top_k: int | None,
                  top_p: float | None, greedy: bool, n_eos: int) -> tuple[SamplingSpec, float]:
    """Check the sampling arguments and return ``(spec, temperature)``; ``temperature=0`` means
    greedy decoding with log-probs at temperature 1 (the returned temperature)."""
    if max_new_tokens < 1:
        raise JaxalignError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise JaxalignError(f"generate: num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise JaxalignError(f"generate: temperature must be >= 0, got {temperature}")
    if temperature == 0:
        greedy, temperature = True, 1.0
    if top_p is not None and not 0 < top_p <= 1:
        raise JaxalignError(f"generate: top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise JaxalignError(f"generate: top_k must be >= 1, got {top_k}")
    spec = SamplingSpec(max_new_tokens=int(max_new_tokens), num_samples=int(num_samples), greedy=bool(greedy),
                        top_k=None if greedy or top_k is None else int(top_k),
                        use_top_p=top_p is not None and top_p < 1 and not greedy, n_eos=int(n_eos))
    return spec, temperature


def prompt_bucket_length(n: int, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> int:
    """The padded width of a prompt batch whose longest prompt has ``n`` tokens: the smallest
    bucket ``>= n``; beyond the largest, the next multiple of the largest; ``buckets=None``: ``n``
    (:func:`jaxalign.data.batching.bucket_length` with ``beyond="multiple"``)."""
    return bucket_length(n, buckets, beyond="multiple")


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int,
                buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to a common bucketed length.

    Returns:
      ``(ids, mask)``, int32 numpy arrays ``[len(prompts), L]`` with
      ``L = prompt_bucket_length(max length, buckets)``; ``mask`` is 1 on real tokens.
    Raises:
      JaxalignError: no prompts, or an empty prompt.
    """
    if len(prompts) == 0:
        raise JaxalignError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise JaxalignError(f"prompt {lengths.index(0)} is empty (a prompt needs at least one token)")
    width = prompt_bucket_length(max(lengths), buckets)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = np.asarray(p, np.int32)
        mask[i, width - len(p):] = 1
    return ids, mask


def checked_prompts(prompt_ids, prompt_mask) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` as numpy arrays, after the checks :func:`generate` needs: both
    ``[batch, prompt_len]``, not empty, every row ending with a real token (left-padded)."""
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise JaxalignError(f"generate: prompt_ids {ids.shape} and prompt_mask {mask.shape} "
                            "must both be [batch, prompt_len]")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise JaxalignError(f"generate: empty prompt batch {ids.shape}")
    if not (mask[:, -1] > 0).all():
        row = int(np.argmin(mask[:, -1] > 0))
        raise JaxalignError(f"generate: prompt {row} does not end with a real token "
                            "(prompts must be left-padded and non-empty)")
    return ids, mask


def padded_rows(b: int, shards: int) -> int:
    """The batch rows the sampler runs: ``b`` rounded up to a multiple of the batch shards."""
    return -(-b // shards) * shards


def sampler_inputs(ids: np.ndarray, mask: np.ndarray, width: int, shards: int, pad_token_id: int):
    """``(ids, mask, valid)`` of ``padded_rows(B, shards)`` rows, the prompts left-padded to
    ``width``. Dummy rows (batch padding for the shards) carry one real token and start
    finished (``valid`` False)."""
    b, p = ids.shape
    rows = padded_rows(b, shards)
    ids_p = np.full((rows, width), pad_token_id, np.int32)
    mask_p = np.zeros((rows, width), np.int32)
    mask_p[b:, -1] = 1
    ids_p[:b, width - p:] = ids
    mask_p[:b, width - p:] = (mask > 0)
    return ids_p, mask_p, np.arange(rows) < b


def as_key(key, greedy: bool):
    """A raw ``uint32[2]`` key from a typed or raw key or an int seed (None: only when greedy)."""
    if key is None:
        if not greedy:
            raise JaxalignError("generate: sampling needs a jax.random key (or pass greedy=True)")
        return jax.random.key_data(jax.random.key(0))
    if isinstance(key, int):
        return jax.random.key_data(jax.random.key(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def eos_tuple(eos_token_ids) -> tuple[int, ...]:
    """An id, a sequence of ids or None -> a tuple of ints."""
    if eos_token_ids is None:
        return ()
    if isinstance(eos_token_ids, (int, np.integer)):
        return (int(eos_token_ids),)
    return tuple(int(i) for i in eos_token_ids)
