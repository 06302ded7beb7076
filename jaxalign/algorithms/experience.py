"""The experience phase every online algorithm shares: prompts -> generate -> reward ->
reference log-probs, as one dict of arrays for the algorithm's pure train step.

What is pure and jitted: sampling (``jaxalign.rollout.generate``), the reference forward, the
reward model. What is not: decoding text for a text reward and calling it. Everything the
update needs that depends only on the data (advantages, score normalisation, GAE) is left to the
algorithm's jitted step, so that it is checkpointed state (running moments in ``extras``) and not
host-side bookkeeping.
"""

from __future__ import annotations

import dataclasses
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.losses import shifted_token_logprobs
from jaxalign.rewards import Reward, RewardConfig


@dataclasses.dataclass
class SamplingConfig:
    """How completions are drawn (the ``sampling:`` subsection of an online algorithm).

    max_new_tokens: decode slots per completion. temperature / top_k / top_p: as in
    ``jaxalign generate``; log-probs are those of the temperature-scaled full softmax.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def validate(self, section: str) -> None:
        if self.max_new_tokens <= 0:
            raise JaxalignError(f"config key '{section}.max_new_tokens': must be > 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise JaxalignError(f"config key '{section}.temperature': must be > 0 for sampling, "
                                f"got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise JaxalignError(f"config key '{section}.top_p': must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k <= 0:
            raise JaxalignError(f"config key '{section}.top_k': must be > 0, got {self.top_k}")


def eos_ids(tokenizer) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS and the end-of-turn tokens it defines."""
    from jaxalign.io.tokenizer import eos_token_ids

    return list(eos_token_ids(tokenizer))


def make_logps_fn(graphdef, temperature: float):
    """Jitted ``logps(params, tokens, attention_mask) -> [N, L]`` at the sampling temperature,
    aligned with ``tokens`` (the training forward; position 0 is 0)."""

    @jax.jit
    def logps(params, tokens, mask):
        logits = nnx.merge(graphdef, params)(tokens, mask)
        return shifted_token_logprobs(logits, tokens, temperature=temperature)

    return logps


class ExperienceMaker:
    """``maker(params, prompt_batch, key) -> (experience, texts, metrics)``.

    ``experience`` (device arrays): ``input_ids``, ``attention_mask``, ``completion_mask``
    ``[N, P + T]`` (prompt left-padded, completion right-padded), ``old_logps`` (sampling
    log-probs, aligned with ``input_ids``), ``ref_logps`` when a reference is given, ``scores``
    ``[N]``, ``finished`` ``[N]`` (ended with EOS) and ``lengths`` ``[N]``. Row ``b * G + g`` is
    sample ``g`` of prompt ``b`` (``G = num_samples``). ``texts``: decoded prompts and
    completions. ``metrics``: reward mean/std/min/max, response length, EOS rate, and the time
    spent generating and scoring.
    """

    def __init__(self, graphdef, tokenizer, reward: Reward, sampling: SamplingConfig, *, num_samples: int = 1,
                 ref_params=None, mesh=None):
        self.graphdef, self.tokenizer, self.reward, self.sampling = graphdef, tokenizer, reward, sampling
        self.num_samples, self.ref_params, self.mesh = num_samples, ref_params, mesh
        self.eos = eos_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]
        self.ref_logps = make_logps_fn(graphdef, sampling.temperature) if ref_params is not None else None

    def sample(self, params, prompt_ids, prompt_mask, key):
        from jaxalign.rollout import generate

        s = self.sampling
        return generate((self.graphdef, params), prompt_ids, prompt_mask, key, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, eos_token_ids=self.eos,
                        pad_token_id=self.pad_id, num_samples=self.num_samples, mesh=self.mesh)

    def decode(self, roll) -> tuple[list[str], list[str]]:
        """Prompt and completion texts (special tokens dropped) of a rollout, row by row."""
        tokens = np.asarray(roll.tokens)
        cmask = np.asarray(roll.completion_mask).astype(bool)
        amask = np.asarray(roll.attention_mask).astype(bool)
        pmask = amask & ~cmask
        prompts = self.tokenizer.batch_decode([t[m] for t, m in zip(tokens, pmask)], skip_special_tokens=True)
        comps = self.tokenizer.batch_decode([t[m] for t, m in zip(tokens, cmask)], skip_special_tokens=True)
        return prompts, comps

    def __call__(self, params, prompt_batch: dict, key):
        t0 = time.perf_counter()
        roll = self.sample(params, prompt_batch["prompt_ids"], prompt_batch["prompt_mask"], key)
        jax.block_until_ready(roll.tokens)
        t1 = time.perf_counter()
        prompts = comps = None
        if self.reward.needs_text:
            prompts, comps = self.decode(roll)
        scores = self.reward(prompts, comps, tokens=roll.tokens, attention_mask=roll.attention_mask,
                             finished=np.asarray(roll.finished))
        exp = {
            "input_ids": roll.tokens,
            "attention_mask": roll.attention_mask,
            "completion_mask": roll.completion_mask,
            "old_logps": roll.aligned_logprobs(),
            "scores": jnp.asarray(scores),
            "finished": roll.finished.astype(jnp.float32),
            "lengths": roll.lengths,
        }
        if self.ref_logps is not None:
            exp["ref_logps"] = self.ref_logps(self.ref_params, roll.tokens, roll.attention_mask)
            jax.block_until_ready(exp["ref_logps"])
        t2 = time.perf_counter()
        lengths = np.asarray(roll.lengths)
        metrics = {
            "reward/mean": float(scores.mean()), "reward/std": float(scores.std()),
            "reward/min": float(scores.min()), "reward/max": float(scores.max()),
            "response_length": float(lengths.mean()), "eos_rate": float(np.asarray(roll.finished).mean()),
            "time/generate": t1 - t0, "time/score": t2 - t1,
        }
        return exp, (prompts, comps), metrics


def reward_from(cfg: RewardConfig, tokenizer, mesh=None) -> Reward:
    """The run's reward (see :class:`~jaxalign.rewards.RewardConfig`)."""
    from jaxalign.rewards import build_reward

    return build_reward(cfg, tokenizer, mesh)
