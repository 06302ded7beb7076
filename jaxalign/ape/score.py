"""Scoring instructions with a causal LM, batched and jitted once per padded shape.

- :meth:`Scorer.logprobs`: the log-probability of each desired output given the instruction and
  the input, teacher-forced under the chat template: ``Σ_t log p(y_t | chat(instr, x), y_<t)``
  over the output's tokens and the end-of-turn token that closes it (so an output that the model
  would continue scores lower); :func:`jaxalign.losses.shifted_token_logprobs` and
  :func:`jaxalign.losses.sequence_logprobs` on the training forward.
- :meth:`Scorer.exact_match`: execution accuracy: the greedy answer (:func:`jaxalign.rollout.generate`)
  equals the desired output after :func:`~jaxalign.ape.templates.normalise_answer`.
- :meth:`Scorer.sample`: sampled or greedy completions of chat prompts (proposals, variations).

Token in, token out: a row is ``prompt ids + output ids + [end of turn]``, joined as token lists,
and the output mask comes from those lengths.
"""

from __future__ import annotations

from typing import Sequence

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign.ape.templates import eval_user, normalise_answer
from jaxalign.data.batching import bucket_length
from jaxalign.io.tokenizer import eos_token_ids
from jaxalign.losses.logprobs import sequence_logprobs, shifted_token_logprobs
from jaxalign.rollout.arguments import DEFAULT_BUCKETS, pad_prompts
from jaxalign.rollout.sampler import generate


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


class Scorer:
    """A model and its tokenizer, with APE's three uses of them (see the module docstring)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16, answer_tokens: int = 8):
        self.graphdef, self.params = nnx.split(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.answer_tokens = answer_tokens
        self.eos = eos_token_ids(tokenizer)
        # The token that ends an assistant turn in the chat template (<|im_end|> for ChatML).
        self.end_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.eos[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        graphdef = self.graphdef

        @jax.jit
        def seq_logps(params, tokens, mask, out_mask):
            logits = nnx.merge(graphdef, params)(tokens, mask)
            return sequence_logprobs(shifted_token_logprobs(logits, tokens), out_mask)

        self._seq_logps = seq_logps

    def chat_ids(self, user: str, assistant_prefix: str = "") -> list[int]:
        """Token ids of a one-turn chat with the generation prompt, then ``assistant_prefix``."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text + assistant_prefix, add_special_tokens=False)["input_ids"])

    def example_ids(self, instruction: str | None, x: str, y: str) -> tuple[list[int], list[int]]:
        """``(prompt ids, scored ids)``: the chat prompt of ``(instruction, x)``, and ``y``'s
        tokens followed by the end-of-turn token."""
        answer = list(self.tokenizer(y, add_special_tokens=False)["input_ids"]) + [self.end_id]
        return self.chat_ids(eval_user(instruction, x)), answer

    def logprobs(self, instruction: str | None, rows: Sequence[tuple[str, str]]) -> np.ndarray:
        """``[len(rows)]`` log-probabilities of each row's output (sum over its tokens)."""
        return self.logprobs_many([(instruction, x, y) for x, y in rows])

    def logprobs_many(self, items: Sequence[tuple[str | None, str, str]]) -> np.ndarray:
        """``[len(items)]`` log-probabilities of ``(instruction, input, output)`` items: every
        candidate of a filter stage in one pass. Items are batched in order of length (less
        padding) and the scores returned in the given order."""
        pairs = [self.example_ids(*item) for item in items]
        order = np.argsort([len(p) + len(a) for p, a in pairs], kind="stable")
        out = np.zeros(len(pairs))
        for lo, hi in _batches(len(pairs), self.batch_size):
            idx = order[lo:hi]
            chunk = [pairs[i] for i in idx]
            width = bucket_length(max(len(p) + len(a) for p, a in chunk), DEFAULT_BUCKETS, beyond="multiple")
            tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
            mask = np.zeros_like(tokens)
            out_mask = np.zeros_like(tokens)
            # Rows past the chunk repeat its first row (one compiled shape per width) and are dropped.
            for i in range(self.batch_size):
                p, a = chunk[i] if i < len(chunk) else chunk[0]
                tokens[i, :len(p) + len(a)] = p + a
                mask[i, :len(p) + len(a)] = 1
                out_mask[i, len(p):len(p) + len(a)] = 1
            out[idx] = np.asarray(self._seq_logps(self.params, tokens, mask, out_mask))[:len(chunk)]
        return out

    def sample(self, prompts: Sequence[list[int]], *, max_new_tokens: int, key=None, temperature: float = 1.0,
               greedy: bool = False) -> list[str]:
        """Decoded completions of token-id prompts (special tokens removed), one per prompt;
        batch ``i`` samples with ``fold_in(key, i)``."""
        texts = []
        key = jax.random.key(0) if key is None else key
        for i, (lo, hi) in enumerate(_batches(len(prompts), self.batch_size)):
            chunk = list(prompts[lo:hi])
            chunk += [chunk[0]] * (self.batch_size - len(chunk))
            ids, mask = pad_prompts(chunk, self.pad_id)
            r = generate((self.graphdef, self.params), ids, mask, jax.random.fold_in(key, i),
                         max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy,
                         eos_token_ids=self.eos, pad_token_id=self.pad_id)
            comp, m = np.asarray(r.completion_ids), np.asarray(r.generated_mask)
            texts.extend(self.tokenizer.decode(comp[j][m[j] > 0].tolist(), skip_special_tokens=True)
                         for j in range(hi - lo))
        return texts

    def answers(self, instruction: str | None, rows: Sequence[tuple[str, str]]) -> list[str]:
        """The greedy answers to each row's input."""
        return self.answers_many([(instruction, x, y) for x, y in rows])

    def answers_many(self, items: Sequence[tuple[str | None, str, str]]) -> list[str]:
        """The greedy answers of ``(instruction, input, output)`` items (the output unused),
        batched in order of prompt length."""
        prompts = [self.chat_ids(eval_user(instruction, x)) for instruction, x, _ in items]
        order = np.argsort([len(p) for p in prompts], kind="stable")
        got = self.sample([prompts[i] for i in order], max_new_tokens=self.answer_tokens, greedy=True)
        out = [""] * len(items)
        for i, a in zip(order, got):
            out[i] = a
        return out

    def exact_match(self, instruction: str | None, rows: Sequence[tuple[str, str]]) -> np.ndarray:
        """``[len(rows)]`` 1.0 where the greedy answer equals the output (normalised), else 0.0."""
        return self.exact_match_many([(instruction, x, y) for x, y in rows])

    def exact_match_many(self, items: Sequence[tuple[str | None, str, str]]) -> np.ndarray:
        """``[len(items)]`` exact-match execution accuracy of ``(instruction, input, output)`` items."""
        got = self.answers_many(items)
        return np.asarray([float(normalise_answer(a) == normalise_answer(y)) for a, (_, _, y) in zip(got, items)])
