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


SLOW = '''import time

def slow(prompts, completions):
    time.sleep(30)
    return [0.0] * len(completions)

def fast(prompts, completions):
    return [1.0] * len(completions)

def boom(prompts, completions):
    raise ValueError("no scores today")
'''


def test_a_reward_that_does_not_return_stops_after_timeout_s(tmp_path):
    import time

    f = tmp_path / "slow_reward.py"
    f.write_text(SLOW)
    r = build_reward(RewardConfig(kind="callable", function=f"{f}:slow", timeout_s=0.5))
    start = time.monotonic()
    with pytest.raises(JaxalignError) as e:
        r(["a"], ["b"])
    assert time.monotonic() - start < 10  # not the 30 s of the sleep
    assert str(e.value) == (f"reward {f}:slow: no result after 0.5 s (reward.timeout_s); the run stops "
                            "(the call is abandoned)")


def test_timeout_s_keeps_scores_and_errors_of_a_prompt_reward(tmp_path):
    f = tmp_path / "quick_reward.py"
    f.write_text(SLOW)
    r = build_reward(RewardConfig(kind="callable", function=f"{f}:fast", timeout_s=5))
    np.testing.assert_array_equal(r(["a", "b"], ["c", "d"]), [1.0, 1.0])
    with pytest.raises(JaxalignError, match=r"^reward .*:boom: raised ValueError: no scores today"):
        build_reward(RewardConfig(kind="callable", function=f"{f}:boom", timeout_s=5))(["a"], ["c"])
    with pytest.raises(JaxalignError, match=r"^config key 'reward\.timeout_s': must be > 0"):
        build_reward(RewardConfig(kind="callable", function=f"{f}:fast", timeout_s=0))


@pytest.mark.slow
def test_cli_stops_on_a_hung_reward_and_the_process_exits(tmp_path):
    """End to end through ``jaxalign grpo`` in a subprocess: exit 2 with one line, no checkpoint,
    and the process ends although the reward's thread still sleeps (a daemon thread)."""
    import sys
    import time

    from tests import procenv

    f, started = tmp_path / "hung_reward.py", tmp_path / "started"
    f.write_text(f"import time\n\ndef score(prompts, completions):\n"
                 f"    open({str(started)!r}, 'w').write(repr(time.time()))\n"
                 f"    time.sleep(3600)\n")
    run = tmp_path / "run"
    proc = procenv.run([sys.executable, "-m", "jaxalign.cli", "grpo", "--config", "configs/grpo_tiny.yaml",
                        "--run-dir", str(run), "--quiet", "grpo.reward.kind=callable",
                        f"grpo.reward.function={f}:score", "grpo.reward.timeout_s=0.5", "train.steps=1",
                        "train.batch_size=2", "grpo.num_generations=2", "grpo.sampling.max_new_tokens=2",
                        "train.eval_at_start=false", "data.eval_fraction=0", "data.buckets=[64]",
                        "model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
                        "num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 512}"],
                       timeout=300, cwd=procenv.ROOT, env=procenv.subprocess_env())
    ended = time.time()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == (f"error: reward {f}:score: no result after 0.5 s (reward.timeout_s); the run stops "
                        "(the call is abandoned)"), lines[0]
    assert ended - float(started.read_text()) < 60  # the process did not wait for the sleep
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
