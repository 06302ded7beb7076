"""The ``reward:`` config section and the :class:`Reward` object the experience phase calls."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.rewards import functions as fn

KINDS = ("model", "callable", "sentiment", "length", "keyword")


@dataclasses.dataclass
class RewardConfig:
    """How completions are scored (the ``reward:`` subsection of an online algorithm).

    kind: ``model`` (a reward model trained by ``jaxalign rm``: its ``final/`` directory in
      ``path``; it must share the policy's tokenizer), ``callable`` (``function:
      "module:function"`` or ``"file.py:function"``, called as ``f(prompts, completions)`` on
      decoded text and returning one number per completion), ``sentiment`` (VADER compound
      score), ``length`` (``−|len − target_length| / target_length`` in characters) or
      ``keyword`` (matches of the regex ``pattern``; ``normalize``: matched characters per character).
    missing_eos_penalty: subtracted from the score of a completion that hit ``max_new_tokens``
      without an EOS (null: no penalty).
    scale: multiplies every score (after the penalty).
    """

    kind: str = "sentiment"
    path: str | None = None
    function: str | None = None
    target_length: int = 64
    pattern: str | None = None
    normalize: bool = False
    missing_eos_penalty: float | None = None
    scale: float = 1.0

    def validate(self, section: str = "reward") -> None:
        if self.kind not in KINDS:
            raise JaxalignError(f"config key '{section}.kind': {self.kind!r} is not one of {KINDS}")
        if self.kind == "model" and not self.path:
            raise JaxalignError(f"config key '{section}.path': required for reward kind 'model'")
        if self.kind == "callable" and not self.function:
            raise JaxalignError(f"config key '{section}.function': required for reward kind 'callable'")
        if self.kind == "keyword" and not self.pattern:
            raise JaxalignError(f"config key '{section}.pattern': required for reward kind 'keyword'")
        from jaxalign.config.checks import check_number

        check_number(self.scale, f"{section}.scale")
        check_number(self.target_length, f"{section}.target_length", 0, None, False)
        if self.missing_eos_penalty is not None:
            check_number(self.missing_eos_penalty, f"{section}.missing_eos_penalty")


class Reward:
    """``reward(prompts, completions, tokens=None, attention_mask=None, finished=None) -> [N]``.

    Text rewards read the decoded strings; a reward model reads the token arrays (the policy's
    own tokens: no re-tokenisation, so what is scored is exactly what was sampled).
    """

    def __init__(self, cfg: RewardConfig, text_fn: Callable | None = None, model_fn: Callable | None = None,
                 name: str = ""):
        self.cfg, self.text_fn, self.model_fn, self.name = cfg, text_fn, model_fn, name or cfg.kind

    @property
    def needs_text(self) -> bool:
        return self.text_fn is not None

    def __call__(self, prompts: Sequence[str] | None, completions: Sequence[str] | None, *, tokens=None,
                 attention_mask=None, finished=None) -> np.ndarray:
        if self.model_fn is not None:
            if tokens is None:
                raise JaxalignError("a reward model needs the token arrays of the completions")
            scores = fn.check_scores(self.model_fn(tokens, attention_mask), len(tokens), self.name)
        else:
            scores = fn.check_scores(fn.call_reward(self.text_fn, self.name, list(prompts), list(completions)),
                                     len(completions), self.name)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.cfg.missing_eos_penalty is not None and finished is not None:
                scores = scores - np.float32(self.cfg.missing_eos_penalty) * (1.0 - np.asarray(finished, np.float32))
            scores = (scores * np.float32(self.cfg.scale)).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise JaxalignError(f"reward {self.name}: score {bad[0]} overflows float32 after reward.scale="
                                f"{self.cfg.scale} / missing_eos_penalty={self.cfg.missing_eos_penalty}")
        return scores


def build_reward(cfg: RewardConfig, tokenizer=None, mesh=None) -> Reward:
    """The :class:`Reward` for ``cfg`` (a reward model is loaded onto ``mesh``)."""
    cfg.validate()
    if cfg.kind == "sentiment":
        fn.sentiment_reward([], [])  # fail now, not after the first rollout, if vader is missing
        return Reward(cfg, fn.sentiment_reward, name="sentiment")
    if cfg.kind == "length":
        fn.length_reward([], cfg.target_length)
        return Reward(cfg, lambda p, c: fn.length_reward(c, cfg.target_length), name="length")
    if cfg.kind == "keyword":
        fn.keyword_reward([], cfg.pattern)
        return Reward(cfg, lambda p, c: fn.keyword_reward(c, cfg.pattern, cfg.normalize),
                      name=f"keyword {cfg.pattern!r}")
    if cfg.kind == "callable":
        return Reward(cfg, fn.load_callable(cfg.function), name=cfg.function)
    from jaxalign.rewards.model import reward_model_scorer

    return Reward(cfg, model_fn=reward_model_scorer(cfg.path, tokenizer, mesh), name=f"model {cfg.path}")
