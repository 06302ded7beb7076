"""The experience phase every online algorithm shares: prompts -> generate -> reward ->
reference log-probs, as one dict of arrays for the algorithm's pure train step.

What is pure and jitted: sampling (``jaxalign.rollout.generate``), the reference forward, the
reward model. What is not: decoding text for a text reward and calling it. Everything the
update needs that depends only on the data (advantages, score normalisation, GAE) is left to the
algorithm's jitted step, so that it is checkpointed state (running moments in ``extras``) and not
host-side bookkeeping.

Hooks let any online algorithm change the phase without a phase of its own: a *prompt
transform* (the sampler sees a different prompt, e.g. RAFT's generation template, while the
train rows hold the plain prompt), a *reward filter* (degenerate samples get ``−inf``, e.g.
RAFT's ``min_length`` / ``forbidden_pattern``; or a shaped score, e.g. DAPO's overlong penalty)
and *dynamic sampling* (groups without signal are replaced by groups of more prompts, DAPO);
they live in :mod:`jaxalign.algorithms.experience_hooks` and are re-exported here.
"""

from __future__ import annotations

import time
from typing import Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data import batch_columns
from jaxalign.losses import shifted_token_logprobs
from jaxalign.parallel import host_rows
from jaxalign.parallel.distributed import to_host
from jaxalign.rewards import Reward, RewardConfig, RewardSum
from jaxalign.rewards.processes import parts_over_processes
from jaxalign.algorithms.sections.sampling import SamplingConfig  # noqa: F401 (re-exported)
from jaxalign.algorithms.experience_hooks import (  # noqa: F401 (re-exported: the hooks lived here)
    DynamicSampling, GenerationTemplate, OverlongPenalty, RewardFilter, eos_ids, join_prompt)


def make_logps_fn(graphdef, temperature: float, mesh=None, chunk_size: int | None = None):
    """Jitted ``logps(params, tokens, attention_mask, completion_mask=None) -> [N, L]`` at the
    sampling temperature, aligned with ``tokens`` (the training forward; position 0 is 0); on a
    mesh each weight is gathered where it is used, so the logits stay split by rows
    (:mod:`jaxalign.models.fsdp`). With ``chunk_size`` and a ``completion_mask``, only the
    completion tokens go through the LM head, in chunks (:mod:`jaxalign.algorithms.logps`);
    every other position is 0."""
    from jaxalign.algorithms.logps import completion_token_logps
    from jaxalign.parallel.fsdp import traced_with

    def logps(params, tokens, mask, completion_mask=None):
        model = nnx.merge(graphdef, params)
        if chunk_size is None or completion_mask is None:
            return shifted_token_logprobs(model(tokens, mask), tokens, temperature=temperature)
        hidden = model.hidden_states(tokens, mask)
        return completion_token_logps(model, hidden, tokens, completion_mask.astype(bool), chunk_size,
                                      temperature=temperature)

    return jax.jit(traced_with(logps, mesh))


# -- the phase ------------------------------------------------------------------------------------

class ExperienceMaker:
    """``maker(params, prompt_batch, key) -> (experience, texts, metrics)``.

    ``experience`` (device arrays): ``input_ids``, ``attention_mask``, ``completion_mask``
    ``[N, P + T]`` (prompt left-padded, completion right-padded), ``old_logps`` (sampling
    log-probs, aligned with ``input_ids``), ``ref_logps`` when a reference is given, ``scores``
    ``[N]``, ``finished`` ``[N]`` (ended with EOS) and ``lengths`` ``[N]``. Row ``b * G + g`` is
    sample ``g`` of prompt ``b`` (``G = num_samples``). ``texts``: decoded prompts and
    completions. ``metrics``: reward mean/std/min/max (and ``reward/<name>``, the mean of each
    component of a reward list), response length, EOS rate, and the time spent generating and
    scoring.

    ``columns``: ``{source row: {column: value}}`` of the prompt data (see
    :func:`jaxalign.data.columns_by_row`); a prompt batch with a ``row`` array gets its rows'
    columns passed to the reward, each value repeated for the prompt's ``G`` samples.

    Hooks: ``prompt_transform(prompt_ids, prompt_mask, tokenizer) -> (ids, mask)`` gives the
    prompts the sampler sees; the rows (and the reward, the reference, the update) still hold
    the plain prompt followed by the completion (``old_logps``: the sampler's, at the completion
    columns). ``reward_filter(rows, completions, scores) -> scores`` (see :class:`RewardFilter`)
    runs after the reward: ``scores`` are then the filtered ones, ``raw_scores`` the reward's,
    and the reward metrics describe the raw ones.

    ``chunk_size``: the reference's forward runs the LM head on the completion tokens only, in
    chunks of this many (``ref_logps`` is 0 elsewhere; every consumer masks by completion).
    """

    def __init__(self, graphdef, tokenizer, reward: Reward | RewardSum, sampling: SamplingConfig, *,
                 num_samples: int = 1, ref_params=None, mesh=None, prompt_transform: Callable | None = None,
                 reward_filter: Callable | None = None, columns: dict | None = None, ref_graphdef=None,
                 chunk_size: int | None = None):
        self.graphdef, self.tokenizer, self.reward, self.sampling = graphdef, tokenizer, reward, sampling
        self.columns = columns
        self.num_samples, self.ref_params, self.mesh = num_samples, ref_params, mesh
        self.prompt_transform, self.reward_filter = prompt_transform, reward_filter
        self.eos = eos_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]
        # ref_graphdef: the reference's own graphdef (with LoRA: the base, adapters off, on the same arrays).
        # Several processes: whole host rows in, whole host rows out (jaxalign.parallel.host_rows).
        self.ref_logps = (host_rows.on_mesh(make_logps_fn(graphdef if ref_graphdef is None else ref_graphdef,
                                                          sampling.temperature, mesh, chunk_size), mesh)
                          if ref_params is not None else None)

    def sample(self, params, prompt_ids, prompt_mask, key, num_samples: int | None = None):
        """The sampler's rollout of these prompts (``num_samples`` per prompt, default the maker's)."""
        from jaxalign.rollout import generate

        s = self.sampling
        n = self.num_samples if num_samples is None else num_samples
        roll = generate((self.graphdef, params), prompt_ids, prompt_mask, key, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, eos_token_ids=self.eos,
                        pad_token_id=self.pad_id, num_samples=n, mesh=self.mesh)
        # Several processes: the rollout is split over all of them; every one gets all its rows.
        return to_host(roll) if host_rows.multi() else roll

    def rows(self, params, prompt_batch: dict, key, prompt_transform: Callable | None = None) -> dict:
        """Sample and lay out the rows: ``input_ids``, ``attention_mask``, ``completion_mask``,
        ``old_logps`` ``[N, P + T]``, ``lengths`` and ``finished`` (bool) ``[N]``; with a prompt
        transform (``prompt_transform``, else the maker's), the plain prompt (``P`` its width)
        followed by the completion."""
        ids, mask = prompt_batch["prompt_ids"], prompt_batch["prompt_mask"]
        transform = prompt_transform if prompt_transform is not None else self.prompt_transform
        if transform is None:
            roll = self.sample(params, ids, mask, key)
            return {"input_ids": roll.tokens, "attention_mask": roll.attention_mask,
                    "completion_mask": roll.completion_mask, "old_logps": roll.aligned_logprobs(),
                    "lengths": roll.lengths, "finished": roll.finished}
        roll = self.sample(params, *transform(ids, mask, self.tokenizer), key)
        plain_ids = np.repeat(np.asarray(ids), self.num_samples, axis=0)
        plain_mask = np.repeat(np.asarray(mask), self.num_samples, axis=0)
        comp = roll.generated_mask
        pad = np.zeros(plain_mask.shape, roll.logprobs.dtype)
        return {"input_ids": jnp.concatenate([plain_ids, roll.completion_ids], axis=1),
                "attention_mask": jnp.concatenate([plain_mask, comp], axis=1),
                "completion_mask": jnp.concatenate([np.zeros_like(plain_mask), comp], axis=1),
                "old_logps": jnp.concatenate([pad, roll.logprobs], axis=1),
                "lengths": roll.lengths, "finished": roll.finished}

    def decode_rows(self, rows: dict) -> tuple[list[str], list[str]]:
        """Prompt and completion texts (special tokens dropped) of rows (see :meth:`rows`)."""
        tokens = np.asarray(rows["input_ids"])
        cmask = np.asarray(rows["completion_mask"]).astype(bool)
        amask = np.asarray(rows["attention_mask"]).astype(bool)
        pmask = amask & ~cmask
        prompts = self.tokenizer.batch_decode([t[m] for t, m in zip(tokens, pmask)], skip_special_tokens=True)
        comps = self.tokenizer.batch_decode([t[m] for t, m in zip(tokens, cmask)], skip_special_tokens=True)
        return prompts, comps

    def decode(self, roll) -> tuple[list[str], list[str]]:
        """Prompt and completion texts (special tokens dropped) of a rollout, row by row."""
        return self.decode_rows({"input_ids": roll.tokens, "attention_mask": roll.attention_mask,
                                 "completion_mask": roll.completion_mask})

    def columns_of(self, prompt_batch: dict, num_samples: int | None = None, table: dict | None = None) -> dict:
        """The prompt batch's other columns aligned with its samples (``num_samples`` per
        prompt, default the maker's), from ``table`` (default the maker's own)."""
        n = self.num_samples if num_samples is None else num_samples
        return batch_columns(self.columns if table is None else table, prompt_batch.get("row"), n)

    def score_parts(self, rows: dict, texts=(None, None), columns: dict | None = None):
        """``(scores, {name: component scores})`` of the rows (``texts``: their decoded prompts
        and completions when the reward reads text; ``columns``: aligned with the rows)."""
        return parts_over_processes(self.reward, *texts, tokens=rows["input_ids"],
                                    attention_mask=rows["attention_mask"], finished=np.asarray(rows["finished"]),
                                    columns=columns)

    def score(self, rows: dict, texts=(None, None), columns: dict | None = None) -> np.ndarray:
        """The reward of the rows (see :meth:`score_parts`)."""
        return self.score_parts(rows, texts, columns)[0]

    def __call__(self, params, prompt_batch: dict, key):
        from jaxalign.models.abstract import active

        if active() is not None:  # jaxalign plan: record what would be sampled, sample nothing
            return abstract_experience(self, active(), params, prompt_batch)
        t0 = time.perf_counter()
        rows = self.rows(params, prompt_batch, key)
        jax.block_until_ready(rows["input_ids"])
        t1 = time.perf_counter()
        filt = self.reward_filter
        prompts = comps = None
        if self.reward.needs_text or (filt is not None and getattr(filt, "needs_text", True)):
            prompts, comps = self.decode_rows(rows)
        scores, parts = self.score_parts(rows, (prompts, comps), self.columns_of(prompt_batch))
        exp = dict(rows, scores=jnp.asarray(scores), finished=rows["finished"].astype(jnp.float32))
        if filt is not None:
            exp["raw_scores"] = jnp.asarray(scores, jnp.float32)
            exp["scores"] = jnp.asarray(filt(rows, comps, exp["raw_scores"]), jnp.float32)
        if self.ref_logps is not None:
            exp["ref_logps"] = self.ref_logps(self.ref_params, rows["input_ids"], rows["attention_mask"],
                                              rows["completion_mask"])
            jax.block_until_ready(exp["ref_logps"])
        t2 = time.perf_counter()
        lengths = np.asarray(rows["lengths"])
        metrics = {
            "reward/mean": float(scores.mean()), "reward/std": float(scores.std()),
            "reward/min": float(scores.min()), "reward/max": float(scores.max()),
            "response_length": float(lengths.mean()), "eos_rate": float(np.asarray(rows["finished"]).mean()),
            "time/generate": t1 - t0, "time/score": t2 - t1,
        }
        metrics.update({f"reward/{name}": float(v.mean()) for name, v in parts.items()})
        return exp, (prompts, comps), metrics


def abstract_experience(maker: ExperienceMaker, record, params, prompt_batch: dict):
    """An experience of the shapes ``maker`` would return for ``prompt_batch`` (zeros, small:
    token rows, no model), with the sampling recorded in ``record`` for the memory planner
    (:mod:`jaxalign.models.abstract`): ``(maker, policy params, the sampler's prompt ids, the
    rows' width)``."""
    import collections

    ids, mask = np.asarray(prompt_batch["prompt_ids"]), np.asarray(prompt_batch["prompt_mask"])
    seen = (ids, mask) if maker.prompt_transform is None else maker.prompt_transform(ids, mask, maker.tokenizer)
    n, t = ids.shape[0] * maker.num_samples, maker.sampling.max_new_tokens
    width = ids.shape[1] + t
    record.samplings.append((maker, params, np.asarray(seen[0]).shape, width))
    comp = np.zeros((n, width), np.int32)
    comp[:, ids.shape[1]:] = 1
    exp = {"input_ids": jnp.zeros((n, width), jnp.int32), "attention_mask": jnp.ones((n, width), jnp.int32),
           "completion_mask": jnp.asarray(comp), "old_logps": jnp.zeros((n, width), jnp.float32),
           "lengths": jnp.full((n,), t, jnp.int32), "finished": jnp.zeros((n,), jnp.float32),
           "scores": jnp.zeros((n,), jnp.float32)}
    if maker.reward_filter is not None:
        exp["raw_scores"] = exp["scores"]
    if maker.ref_logps is not None:
        exp["ref_logps"] = jnp.zeros((n, width), jnp.float32)
    return exp, (None, None), collections.defaultdict(float)


def reward_from(cfg: RewardConfig | list, tokenizer, mesh=None) -> Reward | RewardSum:
    """The run's reward (see :class:`~jaxalign.rewards.RewardConfig`; a list: their weighted sum)."""
    from jaxalign.rewards import build_reward

    return build_reward(cfg, tokenizer, mesh)
