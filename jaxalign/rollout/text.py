"""Text in, text out: :func:`generate_text` tokenizes prompts (optionally with the chat
template), calls :func:`~jaxalign.rollout.sampler.generate` and decodes the completions."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.rollout.arguments import DEFAULT_BUCKETS, pad_prompts
from jaxalign.rollout.sampler import Rollout, generate


def _eos_ids(tokenizer) -> list[int]:
    try:
        from jaxalign.io.tokenizer import eos_token_ids
    except ImportError:
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return eos_token_ids(tokenizer)


def encode_prompts(tokenizer, prompts: Sequence, *, chat: bool = False,
                   system: str | None = None) -> list[list[int]]:
    """Token ids of each prompt.

    With ``chat=True`` a prompt (a string, or a list of ``{"role", "content"}`` messages) is
    rendered with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` and encoded
    without adding special tokens (the template writes its own); ``system`` adds a system turn
    to string prompts. Otherwise the text is encoded as the tokenizer does by default.
    """
    out = []
    for i, prompt in enumerate(prompts):
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise JaxalignError("--chat: the tokenizer has no chat template")
            if isinstance(prompt, str):
                messages = ([{"role": "system", "content": system}] if system else [])
                messages.append({"role": "user", "content": prompt})
            else:
                messages = list(prompt)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(prompt, str):
                raise JaxalignError(f"prompt {i}: a list of messages needs chat=True")
            ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise JaxalignError(f"prompt {i} is empty after tokenization")
        out.append(list(ids))
    return out


def generate_text(model, tokenizer, prompts: Sequence, *, key=0, max_new_tokens: int = 128,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  greedy: bool = False, num_samples: int = 1, chat: bool = False,
                  system: str | None = None, eos_token_ids=None, batch_size: int | None = None,
                  buckets: Sequence[int] | None = DEFAULT_BUCKETS, return_rollouts: bool = False):
    """Complete text prompts with a causal LM.

    Args:
      model: a ``CausalLM`` or ``(graphdef, state)``.
      tokenizer: a ``transformers`` tokenizer (e.g. from :func:`jaxalign.load_tokenizer`).
      prompts: strings (or, with ``chat=True``, message lists).
      key: a ``jax.random`` key or an int seed; batch ``i`` uses ``fold_in(key, i)``.
      chat: render each prompt with the tokenizer's chat template (generation prompt added).
      eos_token_ids: ids that stop a completion (default: the tokenizer's EOS plus the
        end-of-turn tokens it defines, e.g. SmolLM2's ``<|im_end|>`` and ``<|endoftext|>``).
      batch_size: prompts per :func:`generate` call (default: all at once).
      Other arguments: as for :func:`~jaxalign.rollout.sampler.generate`.

    Returns:
      ``len(prompts) * num_samples`` completion strings (special tokens removed), samples of a
      prompt adjacent; with ``return_rollouts=True``, ``(texts, rollouts)`` with one
      :class:`Rollout` per batch.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    encoded = encode_prompts(tokenizer, prompts, chat=chat, system=system)
    eos = _eos_ids(tokenizer) if eos_token_ids is None else eos_token_ids
    pad = tokenizer.pad_token_id
    if pad is None:
        # Masks come from lengths, never from token values, so reusing EOS as pad is safe.
        pad = (list(eos) or [0])[0] if not isinstance(eos, int) else eos
    if isinstance(key, int):
        key = jax.random.key(key)
    batch_size = batch_size or len(encoded)
    texts, rollouts = [], []
    for i, start in enumerate(range(0, len(encoded), batch_size)):
        ids, mask = pad_prompts(encoded[start:start + batch_size], pad, buckets)
        r = generate(model, ids, mask, jax.random.fold_in(key, i), max_new_tokens=max_new_tokens,
                     temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                     eos_token_ids=eos, pad_token_id=pad, num_samples=num_samples, buckets=buckets)
        comp, m = np.asarray(r.completion_ids), np.asarray(r.generated_mask)
        texts.extend(tokenizer.decode(comp[j][m[j] > 0].tolist(), skip_special_tokens=True)
                     for j in range(comp.shape[0]))
        rollouts.append(r)
    return (texts, rollouts) if return_rollouts else texts


__all__ = ["Rollout", "encode_prompts", "generate_text"]
