"""Rewards that see the data and combine: which columns a callable receives, a list of rewards
as a weighted sum with each component's own scores, and the config errors of a ``reward:`` list
(one line naming ``section[i].key``) for every online algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.rewards import (RewardConfig, RewardSum, build_reward, component_names, keyword_reward,
                              reward_model_path)
from tests.algorithms.conftest import TINY

COLUMNS = {"answer": [1, 2, 3], "topic": ["a", "b", "c"]}


def _callable(tmp_path, source: str, name: str = "f") -> RewardConfig:
    path = tmp_path / f"r_{abs(hash(source))}.py"
    path.write_text(source)
    return RewardConfig(kind="callable", function=f"{path}:{name}")


@pytest.mark.parametrize("signature, passed", [
    ("(prompts, completions)", []),                                   # today's callables: nothing more
    ("(prompts, completions, answer)", ["answer"]),                   # by name
    ("(p, c, *, topic=None)", ["topic"]),                             # keyword-only, by name
    ("(prompts, completions, answer, unknown=None)", ["answer"]),     # a name the data lacks: its default
    ("(prompts, completions, **kw)", ["answer", "topic"]),            # **kwargs: every column
    ("(answer, completions, **kw)", ["topic"]),                       # never a column as a first argument
])
def test_a_callable_gets_the_columns_it_names(tmp_path, signature, passed):
    first_two = [p.strip() for p in signature.strip("()").split(",")[:2]]  # they get prompts, completions
    body = (f"def f{signature}:\n"
            "    args = dict(locals())\n"
            "    args.update(args.pop('kw', {}))\n"
            f"    f.seen = sorted(k for k, v in args.items() if k not in {first_two!r} and v is not None)\n"
            "    return [0.0] * 3\n")
    cfg = _callable(tmp_path, body)
    r = build_reward(cfg)
    r(["p"] * 3, ["x", "y", "z"], columns=COLUMNS)
    assert r.text_fn.seen == sorted(passed)


def test_columns_arrive_aligned_with_the_completions(tmp_path):
    cfg = _callable(tmp_path, "def f(prompts, completions, answer):\n"
                              "    return [float(c == str(a)) for c, a in zip(completions, answer)]\n")
    np.testing.assert_array_equal(build_reward(cfg)(["p"] * 3, ["1", "0", "3"], columns=COLUMNS), [1, 0, 1])
    # A column the function requires but the data lacks: one line naming the function.
    with pytest.raises(JaxalignError, match=r"^reward .*:f: raised TypeError: .*'answer'"):
        build_reward(cfg)(["p"], ["1"], columns={})


def test_a_list_is_the_weighted_sum_and_keeps_each_component():
    cfgs = [RewardConfig(kind="keyword", pattern="a", name="a_count", weight=2.0),
            RewardConfig(kind="keyword", pattern="b", name="b_frac", normalize=True, weight=-0.5,
                         missing_eos_penalty=1.0),
            RewardConfig(kind="math", name="correct", format_bonus=0.25)]
    r = build_reward(cfgs)
    assert isinstance(r, RewardSum) and r.needs_text
    comps = ["aab 3", "bb #### 2", "a"]
    finished = np.array([True, True, False])
    total, parts = r.parts(["q"] * 3, comps, finished=finished, columns={"answer": [3, 2, 5]})
    a = keyword_reward(comps, "a")
    b = keyword_reward(comps, "b", normalize=True) - 1.0 * (1 - finished)  # its own penalty, before its weight
    correct = np.array([1.0, 1.25, 0.0])
    assert list(parts) == ["a_count", "b_frac", "correct"]
    np.testing.assert_allclose(parts["a_count"], a)
    np.testing.assert_allclose(parts["b_frac"], b, rtol=1e-6)
    np.testing.assert_allclose(parts["correct"], correct)
    np.testing.assert_allclose(total, 2.0 * a - 0.5 * b + correct, rtol=1e-6)
    np.testing.assert_array_equal(r(["q"] * 3, comps, finished=finished, columns={"answer": [3, 2, 5]}), total)
    assert component_names(cfgs) == ["a_count", "b_frac", "correct"] and component_names(cfgs[0]) == []


def test_a_single_reward_is_unchanged_and_weight_multiplies_it():
    comps = ["banana", "xyz"]
    one = build_reward(RewardConfig(kind="keyword", pattern="a"))
    total, parts = one.parts(["q", "q"], comps)
    assert parts == {}  # a single reward logs no components
    np.testing.assert_array_equal(total, keyword_reward(comps, "a"))
    tripled = build_reward(RewardConfig(kind="keyword", pattern="a", weight=3.0))
    np.testing.assert_array_equal(tripled(["q", "q"], comps), 3.0 * keyword_reward(comps, "a"))


def test_reward_model_path_of_a_list():
    assert reward_model_path(RewardConfig(kind="model", path="rm")) == "rm"
    assert reward_model_path([RewardConfig(kind="math"), RewardConfig(kind="model", path="rm2")]) == "rm2"
    assert reward_model_path([RewardConfig(kind="math")]) is None


MATH_AND_FORMAT = "[{kind: math, name: correct}, {kind: keyword, pattern: '####', name: fmt, weight: 0.1}]"


@pytest.mark.parametrize("algorithm, section", [("grpo", "grpo"), ("ppo", "ppo"), ("raft", "raft"),
                                                ("online-dpo", "online_dpo")])
def test_every_online_algorithm_takes_a_reward_list(algorithm, section):
    cfg = load_config(TINY[algorithm], [f"{section}.reward={MATH_AND_FORMAT}"], algorithm=algorithm)
    reward = cfg.algo.reward
    assert [(r.kind, r.name, r.weight) for r in reward] == [("math", "correct", 1.0), ("keyword", "fmt", 0.1)]
    assert cfg.to_dict()[section]["reward"][1]["pattern"] == "####"  # saved as a list, reloadable


@pytest.mark.parametrize("value, message", [
    ("[{kind: math}, {kind: nope}]", r"config key 'grpo\.reward\[1\]\.kind': 'nope' is not one of"),
    ("[{kind: math}, {kindd: math}]", r"unknown config key 'grpo\.reward\[1\]\.kindd'; did you mean "
                                      r"'grpo\.reward\[1\]\.kind'\?"),
    ("[{kind: math, weight: .nan}]", r"config key 'grpo\.reward\[0\]\.weight'"),
    ("[{kind: math, weight: x}]", r"config key 'grpo\.reward\[0\]\.weight': expected float"),
    ("[{kind: keyword}]", r"config key 'grpo\.reward\[0\]\.pattern': required"),
    ("[{kind: math}, {kind: math}]", r"config key 'grpo\.reward\[1\]\.name': 'math' is also the name of "
                                     r"grpo\.reward\[0\]"),
    ("[{kind: math, name: mean}]", r"config key 'grpo\.reward\[0\]\.name': 'mean' is taken"),
    ("[{kind: math, name: 'a b'}]", r"config key 'grpo\.reward\[0\]\.name': 'a b' must be letters"),
    ("[{kind: math}, 3]", r"config key 'grpo\.reward\[1\]': expected a mapping, got 3"),
    ("[]", r"config key 'grpo\.reward': an empty list"),
    ("[{kind: math, answer_column: ''}]", r"config key 'grpo\.reward\[0\]\.answer_column': required"),
])
def test_reward_list_errors_name_the_entry_and_key(value, message):
    with pytest.raises(JaxalignError, match="^" + message) as e:
        load_config(TINY["grpo"], [f"grpo.reward={value}"], algorithm="grpo")
    assert "\n" not in str(e.value)
