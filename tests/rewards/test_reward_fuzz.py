"""Fuzzed user reward functions: whatever a ``reward.function`` returns, raises or is.

The contract: a :class:`~jaxalign.rewards.Reward` returns one finite float32 score per
completion, exactly the numbers the function returned, or raises one :class:`JaxalignError`
line naming the reward. The oracle below decides validity independently of the checks in
``jaxalign.rewards.functions`` (from the returned Python/NumPy values themselves).
Derandomised for CI; tests/rewards/test_rewards.py holds the hand-written cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign.errors import JaxalignError
from jaxalign.rewards import RewardConfig, build_reward, load_callable
from jaxalign.rewards.base import Reward
from tests.fuzz_helpers import FUZZ, cli_error_line, one_error_line, tree_digest

F32_MAX = float(np.finfo(np.float32).max)

number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**62), 2**62),
                   st.sampled_from([1e39, -1e39, 3.4e38, 10**40, True, False, -0.0]))
element = st.one_of(number, number, number, st.sampled_from(["1.5", "", None, 1j, b"2"]),
                    st.builds(np.float64, st.floats(allow_nan=True)), st.builds(np.int32, st.integers(-5, 5)),
                    st.lists(st.floats(-2, 2), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                             max_size=1))


def returned(n: int):
    """What a user function might return for ``n`` completions."""
    length = st.one_of(st.just(n), st.just(n), st.just(n), st.integers(0, n + 2))
    as_list = length.flatmap(lambda k: st.lists(element, min_size=k, max_size=k))
    arr_dtype = st.sampled_from(["float32", "float64", "int64", "bool", "float16", "complex64", "object", "U3"])
    as_array = st.tuples(length, arr_dtype, st.sampled_from(["1d", "1d", "2d", "0d"])).flatmap(
        lambda a: st.lists(st.floats(-1e6, 1e6), min_size=a[0], max_size=a[0]).map(
            lambda xs, a=a: _array(xs, a[1], a[2])))
    other = st.sampled_from([None, "0.5", {"score": 1.0}, {1, 2}, 3.0, b"\x00"])
    return st.one_of(as_list, as_list, as_list.map(tuple), as_array, other,
                     as_list.map(lambda xs: (x for x in xs)))


def _array(xs, dtype, shape):
    a = np.asarray(xs, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(str if dtype == "U3" else dtype)
    if shape == "2d":
        return a.reshape(1, -1)
    if shape == "0d":
        return np.asarray(a[0] if a.size else 0.0, a.dtype)
    return a


def oracle(value, n: int):
    """The float32 scores a valid return gives, or None when it must be refused."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "biuf":
            return None
        items = value.tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    if len(items) != n:
        return None
    out = []
    for v in items:
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, (bool, int, float)):  # str, bytes, None, complex, list, dict
            return None
        f = float(v)
        if not math.isfinite(f) or abs(f) > F32_MAX:
            return None
        out.append(np.float32(f))
    return np.asarray(out, np.float32)


@settings(FUZZ, max_examples=400)
@given(data=st.data(), n=st.integers(1, 4), scale=st.sampled_from([1.0, -2.0]))
def test_any_return_value_gives_its_scores_or_one_error_line(data, n, scale):
    value = data.draw(returned(n))
    expected = None if hasattr(value, "__next__") else oracle(value, n)  # a generator: refused
    reward = Reward(RewardConfig(kind="callable", function="m:f", scale=scale), lambda p, c: value, name="m:f")
    if expected is not None:
        with np.errstate(over="ignore"):
            if not np.all(np.isfinite(expected * np.float32(scale))):
                expected = None  # a finite score that reward.scale pushes past float32
    try:
        scores = reward(["p"] * n, ["c"] * n)
    except JaxalignError as e:
        one_error_line(e, "reward m:f: ")
        assert expected is None, (value, str(e))
        return
    assert expected is not None, (value, scores)
    assert scores.dtype == np.float32 and scores.shape == (n,) and np.all(np.isfinite(scores)), scores
    np.testing.assert_array_equal(scores, expected * np.float32(scale))


class Boom(Exception):
    pass


@settings(FUZZ, max_examples=30)
@given(exc=st.sampled_from([ValueError, KeyError, ZeroDivisionError, RuntimeError, Boom, AssertionError,
                            RecursionError, MemoryError]),
       msg=st.text(max_size=40))
def test_an_exception_in_the_user_function_is_one_error_line(exc, msg):
    """Found: an exception raised by the user's function escaped with a traceback."""
    def f(prompts, completions):
        raise exc(msg)

    reward = Reward(RewardConfig(kind="callable", function="m:f"), f, name="m:f")
    with pytest.raises(JaxalignError) as e:
        reward(["p"], ["c"])
    text = one_error_line(e.value, f"reward m:f: raised {exc.__name__}")
    assert "test_reward_fuzz.py:" in text  # where, in the user's code


MODULES = {
    "syntax": "def f(p, c):\n    return [1.0] *\n",
    "raises": "raise RuntimeError('no GPU here')\ndef f(p, c):\n    return [0.0] * len(c)\n",
    "exits": "import sys\nsys.exit(3)\n",
    "imports": "import no_such_module_for_jaxalign_tests\n",
    "not_callable": "f = 3\n",
    "no_function": "def g(p, c):\n    return [0.0] * len(c)\n",
    "ok": "def f(p, c):\n    return [float(len(x)) for x in c]\n",
    "indent": "def f(p, c):\nreturn 1\n",
    "binary": b"\xff\xfe\x00def f(): pass\n",
}


@settings(FUZZ, max_examples=40)
@given(kind=st.sampled_from(sorted(MODULES)), spec=st.sampled_from(["{file}:f", "{file}:", ":f", "{file}",
                                                                      "{dir}:f", "{file}:f:g", "{missing}:f"]))
def test_any_reward_function_spec_loads_or_is_one_error_line(tmp_path_factory, kind, spec):
    """Found: a reward file with a syntax error, or one raising while imported, escaped with a
    traceback (only ImportError was caught); ``sys.exit()`` in it ended the whole CLI."""
    d = tmp_path_factory.mktemp("reward")
    path = d / f"reward_{kind}.py"
    content = MODULES[kind]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    text = spec.format(file=path, dir=d, missing=d / "missing.py")
    try:
        fn = load_callable(text)
    except JaxalignError as e:
        one_error_line(e, "config key 'reward.function': ")
        assert not (kind == "ok" and text == f"{path}:f"), str(e)
        return
    assert kind == "ok" and text == f"{path}:f"
    np.testing.assert_array_equal(build_reward(RewardConfig(kind="callable", function=text))(["a"], ["xyz"]),
                                  [3.0])


@pytest.mark.parametrize("key, value", [("scale", math.nan), ("scale", math.inf), ("target_length", 0),
                                        ("missing_eos_penalty", math.nan), ("timeout_s", math.nan),
                                        ("timeout_s", -1.0)])
def test_reward_config_values_are_checked(key, value):
    cfg = RewardConfig(kind="length", **{key: value})
    with pytest.raises(JaxalignError, match=rf"^config key 'reward\.{key}': "):
        build_reward(cfg)


@pytest.mark.slow
def test_a_nan_reward_stops_the_cli_in_one_line_without_a_checkpoint(tmp_path, capsys):
    """End to end through ``jaxalign grpo``: the first rollout is scored with NaN."""
    from jaxalign.cli import main

    f = tmp_path / "nan_reward.py"
    f.write_text("def score(prompts, completions):\n    return [float('nan')] * len(completions)\n")
    run = tmp_path / "run"
    rc = main(["grpo", "--config", "configs/grpo_tiny.yaml", "--run-dir", str(run), "--quiet",
               "grpo.reward.kind=callable", f"grpo.reward.function={f}:score", "train.steps=1",
               "train.batch_size=2", "grpo.num_generations=2", "grpo.sampling.max_new_tokens=2",
               "train.eval_at_start=false", "data.eval_fraction=0", "data.buckets=[64]",
               "model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
               "num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 512}"])
    line = cli_error_line(capsys, rc)
    assert line == f"error: reward {f}:score: score 0 is nan (scores must be finite)", line
    files = tree_digest(run)
    assert not [k for k in files if k.startswith("checkpoints/")], files  # nothing to resume from
