"""Built-in rewards against hand computations; user callables; config errors; EOS penalty."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.rewards import RewardConfig, build_reward, keyword_reward, length_reward, load_callable


def test_keyword_counts_and_fractions():
    comps = ["banana", "", "xyz", "aa a"]
    np.testing.assert_array_equal(keyword_reward(comps, "a"), [3, 0, 0, 3])
    np.testing.assert_allclose(keyword_reward(comps, "a", normalize=True), [3 / 6, 0, 0, 3 / 4])
    np.testing.assert_array_equal(keyword_reward(["good good", "goods"], r"\bgood\b"), [2, 0])


def test_length_reward():
    np.testing.assert_allclose(length_reward(["abcd", "ab", "abcdefgh"], 4), [0.0, -0.5, -1.0])
    with pytest.raises(JaxalignError, match="target_length"):
        length_reward(["a"], 0)


def test_sentiment_orders_positive_above_negative():
    pytest.importorskip("vaderSentiment")
    r = build_reward(RewardConfig(kind="sentiment"))
    s = r(["q", "q"], ["I love it, wonderful!", "I hate it, awful."])
    assert s[0] > 0.5 and s[1] < -0.5


def test_missing_eos_penalty_and_scale():
    r = build_reward(RewardConfig(kind="keyword", pattern="a", missing_eos_penalty=1.0, scale=2.0))
    s = r(["", ""], ["aa", "aa"], finished=np.array([True, False]))
    np.testing.assert_allclose(s, [4.0, 2.0])


def test_user_callable_from_file(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def score(prompts, completions):\n    return [len(p) + len(c) for p, c in zip(prompts, completions)]\n")
    r = build_reward(RewardConfig(kind="callable", function=f"{f}:score"))
    np.testing.assert_array_equal(r(["ab", "c"], ["d", ""]), [3, 1])


def test_user_callable_errors(tmp_path):
    f = tmp_path / "bad_reward.py"
    f.write_text("def short(p, c):\n    return [1.0]\n\ndef nan(p, c):\n    return [float('nan')] * len(c)\n")
    with pytest.raises(JaxalignError, match="returned 1 scores for 2 completions"):
        build_reward(RewardConfig(kind="callable", function=f"{f}:short"))(["a", "b"], ["c", "d"])
    with pytest.raises(JaxalignError, match="must be finite"):
        build_reward(RewardConfig(kind="callable", function=f"{f}:nan"))(["a"], ["c"])
    with pytest.raises(JaxalignError, match="has no function 'missing'"):
        load_callable(f"{f}:missing")
    with pytest.raises(JaxalignError, match="cannot import"):
        load_callable("no_such_module_xyz:f")
    with pytest.raises(JaxalignError, match="expected 'module:function'"):
        load_callable("just_a_name")


@pytest.mark.parametrize("cfg, key", [
    (RewardConfig(kind="nope"), "reward.kind"),
    (RewardConfig(kind="model"), "reward.path"),
    (RewardConfig(kind="callable"), "reward.function"),
    (RewardConfig(kind="keyword"), "reward.pattern"),
    (RewardConfig(kind="keyword", pattern="("), "reward.pattern"),
])
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(JaxalignError, match=key.replace(".", r"\.")):
        build_reward(cfg)
