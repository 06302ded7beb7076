"""RAFT: reward-ranked fine-tuning (Dong et al. 2023, arXiv:2304.06767; ALGORITHMS.md §7).
``jaxalign raft --config configs/raft_tiny.yaml``; the ``raft:`` section is :class:`Config`.

Each iteration (one train step): take ``train.batch_size`` prompts, sample from the current
policy, score, rank and keep the best, then fine-tune on the kept (prompt, completion) pairs
with the SFT loss on completion tokens only.

- ``ranking: local``: ``K = 1/α`` samples per prompt, the best one of each prompt is kept;
- ``ranking: global``: one sample per prompt, the top ``α`` fraction of the batch is kept.

The core, :func:`raft_iteration`, knows nothing about text or models: it takes a sampler, a
reward and (optionally) a fine-tuning step, so any generator (another model, a different
prompt, a non-text sampler) plugs in; its rank-and-keep part, :func:`rank_and_keep`, is what
``jaxalign raft`` runs after the shared online experience phase (:func:`spec`). There the
sampler may see a *generation* prompt (``generation_template``, e.g. a "magic" prefix) while
the SFT batch holds the plain training prompt, joined to the sampled completion token by token
(no string surgery), and the reward-hacking filters turn degenerate samples' rewards into −inf:
both are hooks of the experience phase, usable by any online algorithm. :class:`TextRaft` is the
same language-model instance driven through :func:`raft_iteration`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.algorithms import online, sft
from jaxalign.algorithms.experience import ExperienceMaker, GenerationTemplate, RewardFilter
from jaxalign.algorithms.experience import join_prompt  # noqa: F401  (re-exported: it was defined here)
from jaxalign.config import RunConfig
from jaxalign.losses import best_of_k, top_fraction
from jaxalign.rewards import component_names
from jaxalign.algorithms.sections.raft import (  # noqa: F401 (re-exported)
    AUTO_MINIBATCHES, Config, RANKINGS, RaftSampling, Selection, auto_minibatches)


# -- the generic core ---------------------------------------------------------------------------

def select(rewards, selection: Selection):
    """Which samples to keep (static shapes, jit-friendly).

    Args:
      rewards: ``[B·K]`` rewards (row ``b·K + k`` is sample ``k`` of prompt ``b``; ``K = 1`` for
        global ranking); filtered samples carry ``−inf``.
    Returns:
      ``(index [M], keep [M])``: the rows of the fine-tuning batch (``M = B`` for local ranking,
      the best of each prompt, ties to the first; ``M = max(1, round(α·B))`` for global ranking,
      best first, ties to the earlier row) and whether each really is kept (False where
      only filtered samples were left).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if selection.ranking == "local":
        k = selection.samples_per_prompt
        idx, keep = best_of_k(rewards.reshape(-1, k))
        return jnp.arange(idx.shape[0]) * k + idx, jnp.any(keep, axis=-1)
    order, keep = top_fraction(rewards, selection.alpha)
    return order, keep[order]


def _mean_std(x, sel):
    n = jnp.maximum(jnp.sum(sel), 1)
    mean = jnp.sum(jnp.where(sel, x, 0.0)) / n
    var = jnp.sum(jnp.where(sel, (x - mean) ** 2, 0.0)) / n
    return mean, jnp.sqrt(var)


@dataclasses.dataclass
class RaftResult:
    """What one iteration produced: the (fine-tuned) ``state``, the ``kept`` samples (a pytree
    of rows ``index``), ``keep`` (real kept rows), all ``samples`` with their ``rewards`` after
    the filters, and ``metrics``."""

    state: Any
    kept: Any
    keep: Any
    index: Any
    samples: Any
    rewards: Any
    metrics: dict


def raft_iteration(sample_fn: Callable, reward_fn: Callable, selection: Selection, key, *,
                   filter_fn: Callable | None = None, finetune_fn: Callable | None = None,
                   state=None) -> RaftResult:
    """One RAFT iteration over any sampler, reward and fine-tuning step (nothing here is text).

    Args:
      sample_fn: ``sample_fn(key) -> samples``, a pytree of arrays with a leading axis of
        ``B·K`` rows (row ``b·K + k`` is sample ``k`` of prompt ``b``, ``K =
        selection.samples_per_prompt``).
      reward_fn: ``reward_fn(samples) -> [B·K]`` scores.
      selection: local or global ranking and α.
      key: the sampling key.
      filter_fn: ``filter_fn(samples, rewards) -> rewards`` with ``−inf`` for degenerate
        samples (reward-hacking filters); these are never kept.
      finetune_fn: ``finetune_fn(state, kept, keep) -> (state, metrics)``, e.g. SFT on the
        kept samples (``keep`` marks the rows that really were kept); None: the caller fine-tunes.
      state: passed to ``finetune_fn``.

    Returns:
      a :class:`RaftResult`; its metrics: ``reward/all_mean``/``all_std`` (non-filtered
      samples), ``reward/kept_mean``/``kept_std``, ``reward/mean``/``std`` (raw scores of every
      sample), ``kept_fraction`` (kept / sampled), ``filtered_fraction``, ``time/generate``,
      ``time/score``, and the fine-tuning step's own.
    """
    t0 = time.perf_counter()
    samples = sample_fn(key)
    jax.block_until_ready(samples)
    t1 = time.perf_counter()
    raw = jnp.asarray(reward_fn(samples), jnp.float32)
    rewards = raw if filter_fn is None else jnp.asarray(filter_fn(samples, raw), jnp.float32)
    t2 = time.perf_counter()
    index, keep, kept, metrics = rank_and_keep(samples, raw, rewards, selection)
    metrics.update({"time/generate": t1 - t0, "time/score": t2 - t1})
    if finetune_fn is not None:
        state, ft = finetune_fn(state, kept, keep)
        metrics.update({k: float(v) for k, v in ft.items()})
    return RaftResult(state, kept, keep, index, samples, rewards, metrics)


def rank_and_keep(samples, raw, rewards, selection: Selection):
    """Rank and keep the best samples, and the iteration's reward metrics (the part of
    :func:`raft_iteration` after scoring, shared with the online pipeline's RAFT).

    Args:
      samples: a pytree of ``[B·K, ...]`` rows.
      raw: ``[B·K]`` float32 rewards as scored; rewards: the same after the filters (``−inf``:
        never kept).
    Returns:
      ``(index, keep, kept, metrics)``: see :func:`select`; ``kept`` the rows ``index`` of
      ``samples``; ``metrics`` (floats) as listed in :func:`raft_iteration`, times excepted.
    """
    index, keep = select(rewards, selection)
    kept = jax.tree.map(lambda x: x[index], samples)
    finite = jnp.isfinite(rewards)
    kept_mask = jnp.zeros(rewards.shape, bool).at[index].set(keep)  # rows of index are distinct
    all_m, all_s = _mean_std(rewards, finite)
    kept_m, kept_s = _mean_std(rewards, kept_mask)
    metrics = {
        "reward/mean": raw.mean(), "reward/std": raw.std(),
        "reward/all_mean": all_m, "reward/all_std": all_s, "reward/kept_mean": kept_m, "reward/kept_std": kept_s,
        "kept_fraction": jnp.mean(kept_mask.astype(jnp.float32)),
        "filtered_fraction": 1.0 - jnp.mean(finite.astype(jnp.float32)),
    }
    return index, keep, kept, {k: float(v) for k, v in metrics.items()}


# -- language models ----------------------------------------------------------------------------

# The rows a RAFT sample carries (what selection gathers and the fine-tuning batch is cut from).
ROW_KEYS = ("input_ids", "attention_mask", "completion_mask", "lengths", "finished")


def prompt_transform(algo: Config) -> GenerationTemplate | None:
    """The experience phase's prompt transform of a ``raft:`` section (``generation_template``)."""
    return GenerationTemplate(algo.generation_template) if algo.generation_template is not None else None


def reward_filter(algo: Config) -> RewardFilter | None:
    """The experience phase's reward filter of a ``raft:`` section (``min_length``,
    ``forbidden_pattern``), or None when neither is set."""
    f = RewardFilter(algo.min_length, algo.forbidden_pattern)
    return f if f.active else None


def kept_batch(kept: dict, keep) -> dict:
    """The SFT batch of the kept rows; rows that were not really kept carry no loss (their
    completion mask is zero)."""
    return {"input_ids": kept["input_ids"], "attention_mask": kept["attention_mask"],
            "completion_mask": kept["completion_mask"] * keep[:, None].astype(kept["completion_mask"].dtype)}


def text_metrics(metrics: dict, samples: dict, kept: dict, keep, eos_rate: float) -> dict:
    """``metrics`` plus the sampled completions' ``response_length``, ``eos_rate`` and the kept
    ones' ``response_length/kept``."""
    lengths = np.asarray(samples["lengths"], np.float32)
    keep_np = np.asarray(keep)
    out = dict(metrics, response_length=float(lengths.mean()), eos_rate=eos_rate)
    out["response_length/kept"] = float(np.asarray(kept["lengths"])[keep_np].mean()) if keep_np.any() else 0.0
    return out


class TextRaft:
    """RAFT's sampler / reward / filters for a causal LM, as an instance of the generic core
    (:func:`raft_iteration`), built on an :class:`ExperienceMaker` and the section's hooks.

    ``sample_fn(params, prompt_batch)`` returns a sampler for :func:`raft_iteration` whose
    samples are training rows ``{input_ids, attention_mask, completion_mask, lengths,
    finished}`` ``[B·K, P + T]``: the plain left-padded prompt followed by the completion the
    policy sampled after the *generation* prompt (``generation_template``).
    """

    def __init__(self, algo: Config, maker: ExperienceMaker, tokenizer):
        self.algo, self.maker, self.tokenizer = algo, maker, tokenizer
        self.selection = algo.selection()
        self.template = prompt_transform(algo)
        self.filter = reward_filter(algo)

    def generation_prompts(self, prompt_ids, prompt_mask):
        """The prompts the sampler sees (the plain ones when there is no generation template)."""
        if self.template is None:
            return np.asarray(prompt_ids), np.asarray(prompt_mask)
        return self.template(prompt_ids, prompt_mask, self.tokenizer)

    def sample_fn(self, params, prompt_batch: dict) -> Callable:
        # Always through a transform: the rows hold the plain prompt + the T completion slots.
        def transform(ids, mask, tokenizer):
            return self.generation_prompts(ids, mask)

        def sample(key):
            rows = self.maker.rows(params, prompt_batch, key, prompt_transform=transform)
            return {k: rows[k] for k in ROW_KEYS}

        return sample

    def texts(self, samples) -> tuple[list[str], list[str]]:
        """Decoded (plain) prompts and completions of the sample rows."""
        return self.maker.decode_rows(samples)

    def reward_fn(self, samples, columns: dict | None = None):
        """Scores of the training rows (plain prompt + completion; a reward model reads these
        tokens); ``columns``: the prompt rows' other columns, aligned with the rows."""
        return self.maker.score(samples, self.texts(samples) if self.maker.reward.needs_text else (None, None),
                                columns)

    def filter_fn(self, samples, rewards):
        """Too-short completions and completions matching ``forbidden_pattern`` -> −inf."""
        if self.filter is None:
            return rewards
        return self.filter(samples, self.texts(samples)[1] if self.filter.needs_text else None, rewards)

    def iteration(self, params, prompt_batch: dict, key) -> tuple[dict, dict]:
        """``(sft_batch, metrics)``: sample, score, filter, select; the batch's completion mask
        is zero on rows that were not really kept (so they carry no loss)."""
        columns = self.maker.columns_of(prompt_batch)
        res = raft_iteration(self.sample_fn(params, prompt_batch), lambda x: self.reward_fn(x, columns),
                             self.selection, key, filter_fn=self.filter_fn if self.filter is not None else None)
        eos_rate = float(np.asarray(res.samples["finished"]).mean())
        return kept_batch(res.kept, res.keep), text_metrics(res.metrics, res.samples, res.kept, res.keep, eos_rate)


def make_loss(graphdef, algo: Config, remat: bool | str = False):
    """The fine-tuning loss: SFT NLL on the kept rows' completion tokens only (prompt tokens,
    padding and rows that were not kept carry none; each row is one sample)."""
    return sft.make_loss(graphdef, sft.Config(aggregation=algo.aggregation, chunk_size=algo.chunk_size), remat)


def spec(cfg: RunConfig) -> online.OnlineSpec:
    """RAFT as an online algorithm: K samples per prompt (generation template and filters as
    hooks of the experience phase), rank and keep (:func:`rank_and_keep`), SFT on the kept
    rows over ``num_minibatches × epochs`` updates; held-out evaluation draws one sample per
    plain prompt."""
    algo: Config = cfg.algo
    selection = algo.selection()
    # The experience's metrics RAFT passes on: the timings and a reward list's components.
    passed = ["time/generate", "time/score"] + [f"reward/{n}" for n in component_names(algo.reward)]

    def to_batch(exp, metrics, batch):
        samples = {k: exp[k] for k in ROW_KEYS}
        _, keep, kept, ranked = rank_and_keep(samples, exp.get("raw_scores", exp["scores"]), exp["scores"],
                                              selection)
        ranked.update({k: metrics[k] for k in passed})
        return kept_batch(kept, keep), text_metrics(ranked, samples, kept, keep, metrics["eos_rate"])

    return online.OnlineSpec(
        sampling=algo.sampling, reward=algo.reward, samples_per_prompt=selection.samples_per_prompt,
        prompt_transform=prompt_transform(algo), reward_filter=reward_filter(algo),
        make_loss=lambda s: make_loss(s.graphdef, algo, cfg.model.remat), to_batch=to_batch,
        num_minibatches=algo.num_minibatches or 1, epochs=algo.epochs, eval_samples_per_prompt=1)


def build_job(cfg: RunConfig):
    """Prompts, policy, reward and the SFT-on-kept-samples step as an online job."""
    return online.job(cfg, spec(cfg))
