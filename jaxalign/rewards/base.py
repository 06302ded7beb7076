"""The ``reward:`` config section and the :class:`Reward` object the experience phase calls."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Callable, ClassVar, Sequence

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.rewards import functions as fn

KINDS = ("model", "callable", "sentiment", "length", "keyword", "math")
# Metric names the experience phase and the algorithms already log under ``reward/``: a
# component of a reward list may not take one.
RESERVED_NAMES = ("mean", "std", "min", "max", "chosen", "rejected", "tie_fraction", "all_mean", "all_std",
                  "kept_mean", "kept_std")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass
class RewardConfig:
    """How completions are scored (the ``reward:`` subsection of an online algorithm).

    ``reward:`` is one mapping, or a list of them: the score is then the weighted sum
    ``Σ_i weight_i · score_i`` and each component is logged as ``reward/<name>`` (its own
    score, before its weight; held out: ``eval/reward/<name>``).

    kind: ``model`` (a reward model trained by ``jaxalign rm``: its ``final/`` directory in
      ``path``; it must share the policy's tokenizer), ``callable`` (``function:
      "module:function"`` or ``"file.py:function"``, called as ``f(prompts, completions,
      **columns)`` on decoded text and returning one number per completion; ``columns``: the
      prompt row's other fields, each a list aligned with the completions, passed only by the
      names ``f`` takes, all of them if it has ``**kwargs``), ``sentiment`` (VADER compound
      score), ``length`` (``−|len − target_length| / target_length`` in characters),
      ``keyword`` (matches of the regex ``pattern``; ``normalize``: matched characters per
      character) or ``math`` (1 when the completion's final number equals the row's
      ``answer_column``, plus ``format_bonus`` when it is marked ``#### 42`` or ``\\boxed{42}``;
      see :mod:`jaxalign.rewards.math`).
    path: ``kind: model``: the reward model's directory (``final/`` of a ``jaxalign rm`` run).
    function: ``kind: callable``: ``"module:function"`` or ``"file.py:function"``.
    target_length: ``kind: length``: the target completion length in characters.
    pattern: ``kind: keyword``: the regex whose matches score.
    normalize: ``kind: keyword``: matched characters per character instead of the match count.
    answer_column: ``kind: math``: the prompt row's field that holds the answer.
    format_bonus: ``kind: math``: added when the answer is marked ``#### 42`` or ``\\boxed{42}``.
    name: the component's metric name in a list (default: the kind; a callable's function name).
    weight: the component's factor in the sum (a single reward: multiplies its score).
    missing_eos_penalty: subtracted from the score of a completion that hit ``max_new_tokens``
      without an EOS (null: no penalty).
    scale: multiplies every score (after the penalty).
    timeout_s: seconds one call of this reward may take (a reward model's first call includes
      its compilation); longer stops the run with an error naming the reward. null: no limit.
    """

    # jaxalign.config.coerce: `reward:` may also be a list of these mappings.
    CONFIG_LIST: ClassVar[bool] = True

    kind: str = "sentiment"
    path: str | None = None
    function: str | None = None
    target_length: int = 64
    pattern: str | None = None
    normalize: bool = False
    answer_column: str = "answer"
    format_bonus: float = 0.0
    name: str | None = None
    weight: float = 1.0
    missing_eos_penalty: float | None = None
    scale: float = 1.0
    timeout_s: float | None = None

    def validate(self, section: str = "reward") -> None:
        if self.kind not in KINDS:
            raise JaxalignError(f"config key '{section}.kind': {self.kind!r} is not one of {KINDS}")
        if self.kind == "model" and not self.path:
            raise JaxalignError(f"config key '{section}.path': required for reward kind 'model'")
        if self.kind == "callable" and not self.function:
            raise JaxalignError(f"config key '{section}.function': required for reward kind 'callable'")
        if self.kind == "keyword" and not self.pattern:
            raise JaxalignError(f"config key '{section}.pattern': required for reward kind 'keyword'")
        if self.kind == "math" and not self.answer_column:
            raise JaxalignError(f"config key '{section}.answer_column': required for reward kind 'math'")
        if self.name is not None and (not _NAME.fullmatch(self.name) or self.name in RESERVED_NAMES):
            why = ("is taken by a reward metric" if self.name in RESERVED_NAMES
                   else "must be letters, digits, '_', '.' or '-'")
            raise JaxalignError(f"config key '{section}.name': {self.name!r} {why}")
        from jaxalign.config.checks import check_number

        check_number(self.scale, f"{section}.scale")
        check_number(self.weight, f"{section}.weight")
        check_number(self.format_bonus, f"{section}.format_bonus")
        check_number(self.target_length, f"{section}.target_length", 0, None, False)
        if self.missing_eos_penalty is not None:
            check_number(self.missing_eos_penalty, f"{section}.missing_eos_penalty")
        if self.timeout_s is not None:
            check_number(self.timeout_s, f"{section}.timeout_s", 0, None, False)

    def metric_name(self) -> str:
        """``name``, else the kind (a callable: its function's name)."""
        if self.name:
            return self.name
        if self.kind == "callable" and self.function:
            return self.function.rsplit(":", 1)[-1] or "callable"
        return self.kind


def reward_entries(reward) -> list[RewardConfig]:
    """The components of a ``reward:`` value (a :class:`RewardConfig` or a list of them)."""
    return list(reward) if isinstance(reward, (list, tuple)) else [reward]


def validate_reward(reward, section: str = "reward") -> None:
    """Check a ``reward:`` value: one :class:`RewardConfig`, or a non-empty list of them with
    distinct names (errors name ``section[i].key``)."""
    if isinstance(reward, RewardConfig):
        reward.validate(section)
        return
    if not isinstance(reward, (list, tuple)) or not reward:
        raise JaxalignError(f"config key '{section}': expected a mapping or a non-empty list of mappings")
    seen: dict[str, int] = {}
    for i, r in enumerate(reward):
        key = f"{section}[{i}]"
        if not isinstance(r, RewardConfig):
            raise JaxalignError(f"config key '{key}': expected a mapping, got {type(r).__name__}")
        r.validate(key)
        name = r.metric_name()
        if name in RESERVED_NAMES:
            raise JaxalignError(f"config key '{key}.name': {name!r} is taken by a reward metric; name this reward")
        if name in seen:
            raise JaxalignError(f"config key '{key}.name': {name!r} is also the name of {section}[{seen[name]}]; "
                                "give each reward its own name")
        seen[name] = i


def reward_model_path(reward) -> str | None:
    """The directory of the (first) reward model in a ``reward:`` value, or None."""
    return next((r.path for r in reward_entries(reward) if r.kind == "model"), None)


def component_names(reward) -> list[str]:
    """The ``reward/<name>`` metric names a ``reward:`` list logs (none for a single reward)."""
    return [r.metric_name() for r in reward] if isinstance(reward, (list, tuple)) else []


def _column_filter(f: Callable) -> Callable[[dict], dict]:
    """``select(columns) -> kwargs``: the columns ``f`` takes as keyword arguments (all of them
    with ``**kwargs``; by name otherwise; never its first two parameters, which receive the
    prompts and the completions)."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: two arguments only
        return lambda columns: {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
        return lambda columns: {k: v for k, v in columns.items() if k not in positional}
    names = {p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return lambda columns: {k: v for k, v in columns.items() if k in names}


class Reward:
    """``reward(prompts, completions, tokens=None, attention_mask=None, finished=None,
    columns=None) -> [N]``.

    Text rewards read the decoded strings (and ``columns``: the prompt rows' other fields,
    ``{name: [N values]}``); a reward model reads the token arrays (the policy's own tokens: no
    re-tokenisation, so what is scored is exactly what was sampled).
    """

    def __init__(self, cfg: RewardConfig, text_fn: Callable | None = None, model_fn: Callable | None = None,
                 name: str = ""):
        self.cfg, self.text_fn, self.model_fn, self.name = cfg, text_fn, model_fn, name or cfg.kind
        self._select = _column_filter(text_fn) if text_fn is not None else None

    @property
    def needs_text(self) -> bool:
        return self.text_fn is not None

    def own_scores(self, prompts: Sequence[str] | None, completions: Sequence[str] | None, *, tokens=None,
                   attention_mask=None, finished=None, columns: dict | None = None) -> np.ndarray:
        """This reward's score of each completion: after ``missing_eos_penalty`` and ``scale``,
        before ``weight``."""
        timeout = self.cfg.timeout_s
        if self.model_fn is not None:
            if tokens is None:
                raise JaxalignError("a reward model needs the token arrays of the completions")
            raw = fn.call_within(lambda: self.model_fn(tokens, attention_mask), timeout, self.name)
            scores = fn.check_scores(raw, len(tokens), self.name)
        else:
            kwargs = self._select(columns or {})
            prompts, completions = list(prompts), list(completions)
            raw = fn.call_within(lambda: fn.call_reward(self.text_fn, self.name, prompts, completions, **kwargs),
                                 timeout, self.name)
            scores = fn.check_scores(raw, len(completions), self.name)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.cfg.missing_eos_penalty is not None and finished is not None:
                scores = scores - np.float32(self.cfg.missing_eos_penalty) * (1.0 - np.asarray(finished, np.float32))
            scores = (scores * np.float32(self.cfg.scale)).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise JaxalignError(f"reward {self.name}: score {bad[0]} overflows float32 after reward.scale="
                                f"{self.cfg.scale} / missing_eos_penalty={self.cfg.missing_eos_penalty}")
        return scores

    def parts(self, prompts, completions, **kw) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(total, {name: scores})``: the total (``weight ×`` the score) and no components."""
        return _weighted([(self.cfg.weight, self.own_scores(prompts, completions, **kw))], self.name), {}

    def __call__(self, prompts: Sequence[str] | None, completions: Sequence[str] | None, **kw) -> np.ndarray:
        return self.parts(prompts, completions, **kw)[0]


class RewardSum:
    """A ``reward:`` list: ``Σ_i weight_i · score_i`` (each component a :class:`Reward`); called
    like a :class:`Reward`, and :meth:`parts` also returns each component's own scores."""

    def __init__(self, rewards: Sequence[Reward]):
        self.rewards = list(rewards)
        self.name = " + ".join(r.cfg.metric_name() for r in self.rewards)

    @property
    def needs_text(self) -> bool:
        return any(r.needs_text for r in self.rewards)

    def parts(self, prompts, completions, **kw) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        own = {r.cfg.metric_name(): r.own_scores(prompts, completions, **kw) for r in self.rewards}
        total = _weighted([(r.cfg.weight, own[r.cfg.metric_name()]) for r in self.rewards], self.name)
        return total, own

    def __call__(self, prompts, completions, **kw) -> np.ndarray:
        return self.parts(prompts, completions, **kw)[0]


def _weighted(terms, name: str) -> np.ndarray:
    """``Σ weight · scores`` in float32 (a weight of 1 leaves a score bit for bit as it was)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = sum(s if w == 1 else s * np.float32(w) for w, s in terms).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(total))
    if bad.size:
        raise JaxalignError(f"reward {name}: score {bad[0]} overflows float32 after the weights")
    return total


def _build_one(cfg: RewardConfig, tokenizer=None, mesh=None) -> Reward:
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
    if cfg.kind == "math":
        return Reward(cfg, _math_fn(cfg), name="math")
    if cfg.kind == "callable":
        return Reward(cfg, fn.load_callable(cfg.function), name=cfg.function)
    from jaxalign.rewards.model import reward_model_scorer

    return Reward(cfg, model_fn=reward_model_scorer(cfg.path, tokenizer, mesh), name=f"model {cfg.path}")


def _math_fn(cfg: RewardConfig) -> Callable:
    from jaxalign.rewards.math import math_reward

    column = cfg.answer_column

    def score(prompts, completions, **columns):
        if column not in columns:
            have = ", ".join(sorted(columns)) or "none"
            raise JaxalignError(f"reward math: the prompt data has no column {column!r} (reward.answer_column; "
                                f"its other columns: {have})")
        return math_reward(completions, columns[column], cfg.format_bonus, column)

    return score


def build_reward(cfg, tokenizer=None, mesh=None) -> Reward | RewardSum:
    """The :class:`Reward` for ``cfg`` (a reward model is loaded onto ``mesh``), or the
    :class:`RewardSum` of a list of configs."""
    validate_reward(cfg)
    if isinstance(cfg, RewardConfig):
        return _build_one(cfg, tokenizer, mesh)
    return RewardSum([_build_one(c, tokenizer, mesh) for c in cfg])
