"""The hooks of the experience phase (:mod:`jaxalign.algorithms.experience`): a *prompt
transform* (:class:`GenerationTemplate`: the sampler sees a different prompt, e.g. RAFT's
generation template, while the train rows hold the plain prompt), *reward filters*
(:class:`RewardFilter`: degenerate samples get ``−inf``, RAFT's ``min_length`` /
``forbidden_pattern``; :class:`OverlongPenalty`: DAPO's length shaping) and *dynamic sampling*
(:class:`DynamicSampling`: groups without signal are replaced by groups of more prompts, DAPO)."""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.losses import filter_rewards, overlong_penalty


def eos_ids(tokenizer) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS and the end-of-turn tokens it defines."""
    from jaxalign.io.tokenizer import eos_token_ids

    return list(eos_token_ids(tokenizer))


def join_prompt(prompt_ids, prompt_mask, prefix: list[int], suffix: list[int], *, pad_id: int,
                bos_id: int | None = None):
    """Left-padded ``[B, P]`` prompts -> ``[B, P + len(prefix) + len(suffix)]`` prompts
    ``prefix + prompt + suffix`` (after a leading ``bos_id``, which stays first), joined as
    tokens. Every row grows by the same amount, so shapes stay bucketed."""
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(bool)
    width = ids.shape[1] + len(prefix) + len(suffix)
    out_ids = np.full((ids.shape[0], width), pad_id, np.int32)
    out_mask = np.zeros((ids.shape[0], width), np.int32)
    for i, (row, m) in enumerate(zip(ids, mask)):
        real = [int(t) for t in row[m]]
        head = real[:1] if (bos_id is not None and real[:1] == [bos_id]) else []
        new = head + list(prefix) + real[len(head):] + list(suffix)
        out_ids[i, width - len(new):] = new
        out_mask[i, width - len(new):] = 1
    return out_ids, out_mask


class GenerationTemplate:
    """A prompt transform: ``transform(prompt_ids, prompt_mask, tokenizer) -> (ids, mask)``, the
    prompts the sampler sees. ``template`` holds ``{prompt}`` once (e.g. ``"Be upbeat! {prompt}"``);
    the text around it is tokenised on its own and joined to the prompt's tokens (no string
    surgery; a leading BOS stays first)."""

    def __init__(self, template: str):
        if template.count("{prompt}") != 1:
            raise JaxalignError(f"generation template {template!r}: must contain '{{prompt}}' exactly once")
        self.template = template
        self._tokenizer, self._parts = None, None

    def parts(self, tokenizer) -> tuple[list[int], list[int], int | None]:
        """``(prefix ids, suffix ids, bos id or None)`` for ``tokenizer`` (cached for the last one)."""
        if self._tokenizer is not tokenizer:
            before, after = self.template.split("{prompt}")
            enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []
            bos = tokenizer.bos_token_id
            # Only a tokenizer that really prepends BOS keeps it in front of the prefix.
            bos = bos if (bos is not None and list(tokenizer("a")["input_ids"])[:1] == [bos]) else None
            self._tokenizer, self._parts = tokenizer, (enc(before), enc(after), bos)
        return self._parts

    def __call__(self, prompt_ids, prompt_mask, tokenizer):
        prefix, suffix, bos = self.parts(tokenizer)
        if not prefix and not suffix:
            return np.asarray(prompt_ids), np.asarray(prompt_mask)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer)[0]
        return join_prompt(prompt_ids, prompt_mask, prefix, suffix, pad_id=pad, bos_id=bos)


class RewardFilter:
    """A reward filter: ``filter(rows, completions, scores) -> scores`` with ``−inf`` for
    degenerate samples: fewer than ``min_length`` completion tokens (EOS included), or a
    completion text matching the regex ``forbidden_pattern``. ``needs_text``: whether it reads
    ``completions`` (the decoded completion texts; None may be passed otherwise)."""

    def __init__(self, min_length: int | None = None, forbidden_pattern: str | None = None):
        self.min_length = min_length
        self.pattern = re.compile(forbidden_pattern) if forbidden_pattern else None

    @property
    def needs_text(self) -> bool:
        return self.pattern is not None

    @property
    def active(self) -> bool:
        """Whether it can change any score (a filter that cannot is best left out)."""
        return self.min_length is not None or self.pattern is not None

    def __call__(self, rows: dict, completions, scores):
        if self.min_length is not None:
            scores = filter_rewards(scores, rows["input_ids"], rows["completion_mask"], min_length=self.min_length)
        if self.pattern is not None:
            bad = np.array([self.pattern.search(c) is not None for c in completions])
            scores = jnp.where(jnp.asarray(bad), -jnp.inf, scores)
        return scores


class OverlongPenalty:
    """A reward filter (see :class:`RewardFilter`): DAPO's soft overlong punishment
    (arXiv:2503.14476 eq. 13) added to the score, from the completion lengths (EOS included):
    0 up to ``max_length − buffer`` tokens, then linearly down to −1 at ``max_length``, −1 beyond
    (:func:`~jaxalign.losses.overlong_penalty`). Reads no text."""

    needs_text = False
    active = True

    def __init__(self, max_length: int, buffer: int):
        if not 0 < buffer <= max_length:
            raise JaxalignError(f"overlong penalty: buffer must be in (0, max_length={max_length}], got {buffer}")
        self.max_length, self.buffer = max_length, buffer

    def __call__(self, rows: dict, completions, scores):
        return jnp.asarray(scores, jnp.float32) + overlong_penalty(rows["lengths"], self.max_length, self.buffer)


def _take_rows(exp: dict, rows: np.ndarray, width: int) -> dict:
    """Rows ``rows`` of an experience, its ``[N, L]`` arrays left-padded to ``width`` columns
    (prompts are left-padded already, so the completion block stays at the right end and position
    ids, which come from the attention mask, are unchanged; padded ids are never read)."""
    out = {}
    for k, v in exp.items():
        v = jnp.asarray(v)[rows]
        if v.ndim == 2 and v.shape[1] < width:
            v = jnp.pad(v, ((0, 0), (width - v.shape[1], 0)))
        out[k] = v
    return out


class DynamicSampling:
    """An experience hook: DAPO's dynamic sampling (arXiv:2503.14476 §3.2, eq. 11). A group of
    ``num_samples`` completions whose scores are all equal (all right or all wrong) has zero
    group-relative advantage and only dilutes the batch; such groups are dropped and the batch
    is refilled with groups of further prompt batches (``draw()``, the run's own prompt
    iterator, so a resumed run draws the same) until it holds as many informative groups as
    prompts, or after ``max_refills`` extra samplings. Still short then (or when the prompts run
    out), the remaining places are filled with dropped groups, in the order they were drawn, so
    the train batch keeps its shape.

    ``hook(make, prompt_batch, key, draw) -> (experience, metrics)`` with ``make(prompt_batch,
    key) -> (experience, texts, metrics)`` (the :class:`ExperienceMaker` bound to the current
    policy) and ``draw() -> prompt batch or None``. The reward metrics are those of the step's
    own prompts (what the policy does before any selection); times are summed over samplings;
    ``dynamic/dropped_groups`` (all-equal groups seen), ``dynamic/refills`` (extra samplings) and
    ``dynamic/filled_groups`` (dropped groups put back to fill the batch) are added.
    """

    def __init__(self, num_samples: int, max_refills: int):
        if num_samples < 2:
            raise JaxalignError(f"dynamic sampling needs >= 2 samples per prompt, got {num_samples}")
        if max_refills < 0:
            raise JaxalignError(f"dynamic sampling: max_refills must be >= 0, got {max_refills}")
        self.num_samples, self.max_refills = num_samples, max_refills

    def informative(self, scores) -> np.ndarray:
        """``[groups]`` bool: the groups whose scores are not all equal."""
        s = np.asarray(scores).reshape(-1, self.num_samples)
        return ~np.all(s == s[:, :1], axis=1)

    def __call__(self, make: Callable, prompt_batch: dict, key, draw: Callable):
        exp, _, metrics = make(prompt_batch, key)
        metrics = dict(metrics)
        want = exp["scores"].shape[0] // self.num_samples
        parts = [exp]
        flags = [self.informative(exp["scores"])]
        refills = 0
        while sum(int(f.sum()) for f in flags) < want and refills < self.max_refills:
            more = draw()
            if more is None:
                break
            refills += 1
            e, _, m = make(more, jax.random.fold_in(key, refills))
            for k in ("time/generate", "time/score"):
                metrics[k] += m[k]
            parts.append(e)
            flags.append(self.informative(e["scores"]))
        dropped = sum(int((~f).sum()) for f in flags)
        metrics.update({"dynamic/dropped_groups": float(dropped), "dynamic/refills": float(refills)})
        # (part, group) in batch order: every informative group first, then the dropped ones.
        order = [(i, g) for i, f in enumerate(flags) for g in np.flatnonzero(f)]
        order += [(i, g) for i, f in enumerate(flags) for g in np.flatnonzero(~f)]
        chosen = order[:want]
        metrics["dynamic/filled_groups"] = float(sum(1 for i, g in chosen if not flags[i][g]))
        if refills == 0 and not metrics["dynamic/filled_groups"]:
            return exp, metrics  # the step's own groups were all informative
        width = max(int(p["input_ids"].shape[1]) for p in parts)
        g = self.num_samples
        pieces = []
        for i, p in enumerate(parts):
            groups = [grp for j, grp in chosen if j == i]
            if groups:
                rows = np.concatenate([np.arange(grp * g, (grp + 1) * g) for grp in groups])
                pieces.append(_take_rows(p, rows, width))
        return {k: jnp.concatenate([p[k] for p in pieces]) for k in pieces[0]}, metrics
