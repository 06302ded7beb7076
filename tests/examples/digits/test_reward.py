"""The reward is the classifier's probability of the prompted digit, fitted on the other half."""

import numpy as np
import pytest

from jaxalign.examples.digits import data
from jaxalign.examples.digits.reward import DigitReward


def test_reward_is_the_probability_of_the_prompted_digit():
    h = data.load_halves(0)
    r = DigitReward(*h["reward"])
    xg, yg = h["generator"]
    # Independent data: the classifier never saw the generator half, and still reads it well.
    assert r.accuracy(xg, yg) > 0.9
    x = data.to_unit(xg[:50])
    p = r.clf.predict_proba(xg[:50].astype(np.float64))
    np.testing.assert_allclose(r(x, yg[:50]), p[np.arange(50), yg[:50]], rtol=1e-5)
    wrong = (yg[:50] + 1) % 10
    assert r(x, yg[:50]).mean() > 0.8 > 0.1 > r(x, wrong).mean()


def test_a_missing_class_is_a_clear_error():
    x, y = data.load_halves(0)["reward"]
    with pytest.raises(ValueError, match=r"no example of digit\(s\) \[3\]"):
        DigitReward(x[y != 3], y[y != 3])


def test_realism_filter_accepts_real_digits_and_rejects_noise():
    from jaxalign.examples.digits.reward import Realism

    h = data.load_halves(0)
    q = Realism(h["reward"][0])
    real = data.to_unit(h["generator"][0])  # digits the PCA never saw
    assert q.pass_rate(real) > 0.95
    noise = np.sign(np.random.default_rng(0).normal(size=(100, 64))).astype(np.float32)  # ±1 blotches
    assert q.pass_rate(noise) == 0.0
    # Independent reconstruction error in numpy from the fitted components.
    x01 = data.to_pixels(real[:5]) / 16.0
    z = (x01 - q.pca.mean_) @ q.pca.components_.T
    np.testing.assert_allclose(q.error(real[:5]), ((z @ q.pca.components_ + q.pca.mean_ - x01) ** 2).mean(1), rtol=1e-6)
    r = q.filter_fn({"x": np.concatenate([real[:3], noise[:2]])}, np.ones(5, np.float32))
    assert np.all(np.isfinite(r[:3])) and np.all(r[3:] == -np.inf)
