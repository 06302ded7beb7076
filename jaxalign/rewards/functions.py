"""Built-in text rewards and loading a user's ``module:function``."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxalign.errors import JaxalignError


def sentiment_reward(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment of each completion, in [-1, 1] (``pip install vaderSentiment``;
    the ``demo`` extra installs it). The rule-based scorer carries its own lexicon, so it works
    offline."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise JaxalignError("reward kind 'sentiment' needs vaderSentiment: pip install vaderSentiment") from None
    global _VADER
    if _VADER is None:
        _VADER = SentimentIntensityAnalyzer()
    return np.asarray([_VADER.polarity_scores(c)["compound"] for c in completions], np.float32)


_VADER = None


def length_reward(completions: Sequence[str], target: int) -> np.ndarray:
    """``−|len(c) − target| / target`` in characters: 0 at the target length, negative around it."""
    if target <= 0:
        raise JaxalignError(f"config key 'reward.target_length': must be > 0, got {target}")
    return np.asarray([-abs(len(c) - target) / target for c in completions], np.float32)


def keyword_reward(completions: Sequence[str], pattern: str, normalize: bool = False) -> np.ndarray:
    """Number of non-overlapping matches of the regular expression ``pattern`` in each completion;
    with ``normalize``, matched characters per character of the completion (0 for an empty one)."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise JaxalignError(f"config key 'reward.pattern': {pattern!r} is not a valid regular expression ({e})") from None
    out = []
    for c in completions:
        matches = list(rx.finditer(c))
        if normalize:
            out.append(sum(m.end() - m.start() for m in matches) / len(c) if c else 0.0)
        else:
            out.append(float(len(matches)))
    return np.asarray(out, np.float32)


def load_callable(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the function."""
    if ":" not in spec:
        raise JaxalignError(f"config key 'reward.function': expected 'module:function', got {spec!r}")
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.exists():
                raise JaxalignError(f"config key 'reward.function': file {mod_name} not found")
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules.setdefault(path.stem, module)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as e:
        raise JaxalignError(f"config key 'reward.function': cannot import {mod_name!r} ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise JaxalignError(f"config key 'reward.function': {mod_name!r} has no function {fn_name!r}")
    return fn


def check_scores(scores, n: int, name: str) -> np.ndarray:
    """A float32 ``[n]`` array of finite scores, or a one-line error naming the reward."""
    try:
        arr = np.asarray(scores, np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise JaxalignError(f"reward {name}: returned {type(scores).__name__}, expected {n} numbers") from None
    if arr.shape[0] != n:
        raise JaxalignError(f"reward {name}: returned {arr.shape[0]} scores for {n} completions")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise JaxalignError(f"reward {name}: score {bad[0]} is {arr[bad[0]]} (scores must be finite)")
    return arr
