"""Built-in text rewards and loading a user's ``module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import numbers
import re
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxalign.errors import JaxalignError


def one_line(s: str, limit: int = 80) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


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
    if not mod_name or not fn_name:
        raise JaxalignError(f"config key 'reward.function': expected 'module:function', got {spec!r}")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise JaxalignError(f"config key 'reward.function': file {mod_name} not found")
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules.setdefault(path.stem, module)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except JaxalignError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed to import
        raise JaxalignError(f"config key 'reward.function': cannot import {mod_name!r} "
                            f"({_describe(e)})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise JaxalignError(f"config key 'reward.function': {mod_name!r} has no function {fn_name!r}")
    return fn


def _describe(e: BaseException) -> str:
    """``"Type: message"`` on one line, with the innermost file:line of the traceback."""
    import traceback

    msg = " ".join(str(e).split())[:200]
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    if isinstance(e, SyntaxError) and e.lineno:
        where = f" at {Path(e.filename or '?').name}:{e.lineno}"
    return f"{type(e).__name__}: {msg}{where}" if msg else f"{type(e).__name__}{where}"


def call_reward(fn: Callable, name: str, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception the user's reward function raises becomes a one-line
    error (its type, message and innermost ``file:line``)."""
    try:
        return fn(*args, **kwargs)
    except JaxalignError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code: report it in one line
        raise JaxalignError(f"reward {name}: raised {_describe(e)}") from None


def call_within(call: Callable[[], object], timeout_s: float | None, name: str):
    """``call()``, or a one-line error naming the reward when it has not returned after
    ``timeout_s`` seconds (None: no limit, called on this thread).

    A reward that never returns (a dead server, a deadlock) would otherwise hang the run with no
    message. Python cannot stop a thread, so the call runs on a daemon thread that is abandoned
    on a timeout: the run stops with the error, and the process still exits.
    """
    if timeout_s is None:
        return call()
    out: dict = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            out["error"] = e

    worker = threading.Thread(target=run, name=f"reward {name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise JaxalignError(f"reward {name}: no result after {timeout_s:g} s (reward.timeout_s); the run stops "
                            "(the call is abandoned)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def check_scores(scores, n: int, name: str) -> np.ndarray:
    """A float32 ``[n]`` array of finite scores, or a one-line error naming the reward.

    Accepted: a list, tuple or 1-D array (numpy, JAX, or anything with ``__array__``) of ``n``
    real numbers (bools count as 0/1). Strings, ``None``, mappings, nested lists, complex numbers
    and values too large for float32 are errors.
    """
    if isinstance(scores, (str, bytes, dict)) or scores is None or not (
            isinstance(scores, (list, tuple)) or hasattr(scores, "__array__")):
        raise JaxalignError(f"reward {name}: returned {type(scores).__name__}, expected a list of {n} numbers")
    items = scores if isinstance(scores, (list, tuple)) else None
    if items is not None:
        for i, v in enumerate(items):
            if not isinstance(v, numbers.Real) and not (hasattr(v, "__array__") and np.ndim(v) == 0):
                raise JaxalignError(f"reward {name}: score {i} is {type(v).__name__} {one_line(repr(v))}, "
                                    "expected a number")
    try:
        raw = np.asarray(scores)
    except Exception:  # noqa: BLE001 - a ragged or odd container
        raise JaxalignError(f"reward {name}: returned {type(scores).__name__} that is not an array of numbers") from None
    if raw.ndim != 1:
        raise JaxalignError(f"reward {name}: returned shape {raw.shape}, expected {n} scores (one per completion)")
    if raw.dtype.kind not in "biuf":
        raise JaxalignError(f"reward {name}: returned {raw.dtype} values, expected real numbers")
    if raw.shape[0] != n:
        raise JaxalignError(f"reward {name}: returned {raw.shape[0]} scores for {n} completions")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        why = "" if not np.isfinite(raw[i]) else " after conversion to float32"
        raise JaxalignError(f"reward {name}: score {i} is {arr[i]}{why} (scores must be finite)")
    return arr
