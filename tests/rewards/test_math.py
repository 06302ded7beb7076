"""The verifiable math reward: the number parser on hand-written cases (tricky ones included),
answer cells, markers and the format bonus, and the reward through ``build_reward`` with the
prompt rows' ``answer`` column."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.rewards import RewardConfig, build_reward, math_reward
from jaxalign.rewards.math import completion_answer, last_number, numbers, parse_number

F = Fraction


@pytest.mark.parametrize("text, want", [
    ("42", [42]),
    ("The answer is 42.", [42]),                  # a full stop is not a decimal point
    ("It costs 3.50 dollars", [F(7, 2)]),
    ("about .5 cups", [F(1, 2)]),
    ("x = -4", [-4]),
    ("(-4)", [-4]),
    ("\u22127 degrees", [-7]),                   # the Unicode minus sign
    ("+3 points", [3]),
    ("10-4=6", [10, 4, 6]),                       # a minus after a digit is an operator
    ("a-5", [5]),
    ("1,234 apples", [1234]),
    ("$1,200.50 in all", [F(2401, 2)]),
    ("12,345,678 people", [12345678]),
    ("1,2,3", [1, 2, 3]),                         # a list, not a grouped number
    ("1,2345", [1, 2345]),                        # a group of four digits is not a thousands group
    ("12,34", [12, 34]),
    ("50% of 3kg", [50, 3]),
    ("3/4", [3, 4]),                              # fractions are not parsed
    ("version 1.2.3", [F(6, 5), 3]),
    ("x_3 and H2O", [3, 2]),
    ("no digits here", []),
    ("", []),
])
def test_numbers(text, want):
    assert numbers(text) == [F(w) for w in want]
    assert last_number(text) == (F(want[-1]) if want else None)


@pytest.mark.parametrize("text, want, marked", [
    ("Tom has 5 apples, then 3 more: 8", 8, False),
    ("#### 72\nso the 5 boxes", 72, True),        # a marker wins over the last number
    ("first #### 3 then #### 4", 4, True),        # the last marker
    ("\\boxed{ 1,000 } and then 3", 1000, True),
    ("\\boxed{12} \\boxed{x}", 12, True),         # a marker without a number is no answer
    ("#### \n7", 7, False),                       # an empty marker: the last number, no bonus
    ("\\boxed{\\frac{1}{2}}", 2, False),          # nested braces are not a marker
    ("nothing", None, False),
])
def test_completion_answer(text, want, marked):
    assert completion_answer(text) == ((F(want) if want is not None else None), marked)


def test_answer_cells():
    assert parse_number(7) == 7 and parse_number(np.int64(7)) == 7
    assert parse_number(0.1) == F(1, 10)          # the float's shortest decimal, not its binary value
    assert parse_number(2.0) == 2
    assert parse_number(" 1,234 ") == 1234
    assert parse_number("Natalia sold 48/2 = 24 clips.\n#### 72") == 72  # GSM8K's answer column
    for bad in (None, True, "seven", float("nan"), [3]):
        with pytest.raises(JaxalignError, match="is not"):
            parse_number(bad)


def test_math_reward_by_hand():
    comps = ["It is 8.", "#### 8", "The answer: 8.0", "\\boxed{9}", "8 apples, 2 pears: 10", ""]
    answers = [8, "8", 8.0, 8, 8, 8]
    np.testing.assert_array_equal(math_reward(comps, answers), [1, 1, 1, 0, 0, 0])
    # The bonus rewards the marker whether or not the answer is right.
    np.testing.assert_allclose(math_reward(comps, answers, format_bonus=0.25), [1, 1.25, 1, 0.25, 0, 0])
    with pytest.raises(JaxalignError, match="2 values in column 'answer' for 1 completions"):
        math_reward(["1"], [1, 2])


def test_math_kind_reads_the_answer_column():
    r = build_reward(RewardConfig(kind="math", format_bonus=0.5))
    got = r(["q1", "q1", "q2"], ["5", "#### 5", "six"], columns={"answer": [5, 5, 6], "source": ["a", "a", "b"]})
    np.testing.assert_allclose(got, [1.0, 1.5, 0.0])
    r = build_reward(RewardConfig(kind="math", answer_column="solution"))
    np.testing.assert_array_equal(r(["q"], ["-3"], columns={"solution": ["-3"]}), [1.0])
    with pytest.raises(JaxalignError, match=r"no column 'solution' .*its other columns: answer"):
        r(["q"], ["-3"], columns={"answer": [-3]})
    with pytest.raises(JaxalignError, match=r"column 'answer' value 'n/a' is not a number"):
        build_reward(RewardConfig(kind="math"))(["q"], ["1"], columns={"answer": ["n/a"]})
