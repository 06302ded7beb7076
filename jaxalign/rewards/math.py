"""A verifiable reward for arithmetic and math word problems (``reward: {kind: math}``).

The completion's answer is the number in its last answer marker — ``#### 42`` (GSM8K's) or
``\\boxed{42}`` (the MATH convention) — or, without a marker, the last number in the text. It is
compared exactly (as fractions, so ``1.50`` equals ``1.5`` and ``0.1`` is not a float
approximation) with the row's answer column. Score: ``1`` when equal, else ``0``, plus
``format_bonus`` when the completion used a marker (whether or not the answer is right, as the
format rewards of DeepSeek-R1, arXiv:2501.12948, and of TRL's GRPO examples).

What counts as a number (``parse_number`` / ``last_number``): integers, decimals (``3.5``,
``.5``), thousands separators (``1,234``, ``12,345,678.9``: groups of exactly three digits),
signs (``-3``, ``+3``, the Unicode minus ``−3``; a ``-`` right after a letter or digit is an
operator, so ``10-4`` holds ``10`` and ``4``), currency and units around it (``$1,200``,
``50%``, ``3kg``). A sentence's full stop is not a decimal point (``is 42.`` -> ``42``).
Fractions (``3/4``), scientific notation and number words are not parsed (``3/4`` holds ``3``
and ``4``).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

import numpy as np

from jaxalign.errors import JaxalignError

# A number: thousands-grouped digits, or plain digits, or a bare decimal; an optional sign that
# is not an operator (not right after a word character, a dot or a closing bracket).
_NUMBER = re.compile(
    r"(?:(?<![\w.)\]])(?P<sign>[-+\u2212]))?"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|(?<!\d)\.\d+)")
# The answer markers: ``#### <number>`` (the rest of its line, up to another marker) and
# ``\boxed{<number>}`` (no nested braces).
_MARKED = re.compile(r"####[ \t]*(?P<hash>(?:(?!####)[^\n])*)|\\boxed\s*\{(?P<box>[^{}]*)\}")


def _to_fraction(sign: str | None, body: str) -> Fraction:
    value = Fraction(body.replace(",", ""))
    return -value if sign in ("-", "\u2212") else value


def numbers(text: str) -> list[Fraction]:
    """Every number in ``text``, in order, as exact fractions (see the module docstring)."""
    return [_to_fraction(m.group("sign"), m.group("body")) for m in _NUMBER.finditer(text)]


def last_number(text: str) -> Fraction | None:
    """The last number in ``text``, or None when there is none."""
    found = numbers(text)
    return found[-1] if found else None


def marked_answer(text: str) -> tuple[bool, Fraction | None]:
    """``(marked, value)``: whether ``text`` has an answer marker holding a number, and the
    first number of the last such marker; ``(False, None)`` without one."""
    value = None
    for m in _MARKED.finditer(text):
        inside = m.group("hash") if m.group("hash") is not None else m.group("box")
        found = numbers(inside)
        if found:
            value = found[0]
    return value is not None, value


def completion_answer(text: str) -> tuple[Fraction | None, bool]:
    """``(answer, marked)``: the marked answer when there is one, else the last number."""
    marked, value = marked_answer(text)
    return (value, True) if marked else (last_number(text), False)


def parse_number(value, what: str = "answer") -> Fraction:
    """An answer cell as an exact fraction: an int, a float (its shortest decimal, so ``0.1``
    is 1/10), or a string holding a number (``"1,234"``, ``"#### 72"``: GSM8K's answer column,
    whose number follows the marker). Anything else is a one-line error."""
    if isinstance(value, bool) or value is None:
        raise JaxalignError(f"{what} {value!r} is not a number")
    if isinstance(value, (int, np.integer)):
        return Fraction(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise JaxalignError(f"{what} {value!r} is not a finite number")
        return Fraction(repr(float(value)))
    if isinstance(value, str):
        found, _ = completion_answer(value)
        if found is not None:
            return found
    raise JaxalignError(f"{what} {value!r} is not a number")


def math_reward(completions: Sequence[str], answers: Sequence, format_bonus: float = 0.0,
                column: str = "answer") -> np.ndarray:
    """``1[answer(c) == a] + format_bonus · 1[c has an answer marker]`` per completion ``c`` and
    row answer ``a`` (see the module docstring for how ``answer(c)`` is read)."""
    if len(answers) != len(completions):
        raise JaxalignError(f"reward math: {len(answers)} values in column {column!r} for "
                            f"{len(completions)} completions")
    out = np.zeros(len(completions), np.float32)
    for i, (c, a) in enumerate(zip(completions, answers)):
        want = parse_number(a, f"reward math: column {column!r} value")
        got, marked = completion_answer(c)
        out[i] = float(got is not None and got == want) + (format_bonus if marked else 0.0)
    return out
