"""The reward: P(prompted digit) under an 11-way classifier (ten digits and "not a digit") times a
density gate, both fitted on the half of the digits the generator never sees; recomputed here in
NumPy from the fitted weights and components. The realism check against an independent formula."""

import numpy as np
import pytest
from flax import nnx

from jaxalign.examples.digits import data
from jaxalign.examples.digits.reward import JUNK, DigitReward, Realism, junk_images


@pytest.fixture(scope="module")
def fitted():
    h = data.load_halves(0)
    return h, DigitReward(*h["reward"], steps=150)


def _numpy_reward(r, pixels, labels):
    m = nnx.merge(r.graphdef, r.params)
    h = pixels / 16.0
    for lin in m.layers:
        z = h @ np.asarray(lin.kernel[...]) + np.asarray(lin.bias[...])
        h = z / (1 + np.exp(-z))  # SiLU
    logits = h @ np.asarray(m.out.kernel[...]) + np.asarray(m.out.bias[...])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pca = r.gate.pca
    zc = (pixels / 16.0 - pca.mean_) @ pca.components_.T
    d2 = (zc ** 2 / pca.explained_variance_).sum(1)
    gate = np.exp(-np.maximum(d2 - r.gate.tau, 0) / r.gate.tau)
    return p[np.arange(len(labels)), labels] * gate, p


def test_reward_is_the_gated_probability_of_the_prompted_digit(fitted):
    h, r = fitted
    xg, yg = h["generator"]
    # Independent data: the classifier never saw the generator half, and still reads it well.
    assert r.accuracy(xg, yg) > 0.9
    want, p = _numpy_reward(r, xg[:50].astype(np.float64), yg[:50])
    np.testing.assert_allclose(r(data.to_unit(xg[:50]), yg[:50]), want, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(r.probs(data.to_unit(xg[:50])), p, rtol=2e-4, atol=1e-6)
    x = data.to_unit(xg)
    wrong = (yg + 1) % 10
    assert r(x, yg).mean() > 0.8 > 0.1 > r(x, wrong).mean()
    # The gate is 1 on at least 99% of the digits it was fitted on (τ is their 99% quantile).
    assert np.mean(r.gate(h["reward"][0]) == 1.0) >= 0.99


def test_non_digits_score_low_for_every_prompt(fitted):
    h, r = fitted
    junk = junk_images(h["generator"][0], np.random.default_rng(123))  # fresh junk, other digits
    assert np.mean(r.probs_pixels(junk).argmax(1) == JUNK) > 0.9
    for label in range(10):
        assert r(data.to_unit(junk), np.full(len(junk), label)).mean() < 0.05
    # All-ink and all-blank images: the saturated extremes.
    for v in (0.0, 16.0):
        assert r(data.to_unit(np.full((1, 64), v)), np.array([3]))[0] < 0.05


def test_junk_kinds():
    x = data.load_halves(0)["reward"][0][:60]
    j = junk_images(x, np.random.default_rng(0))
    assert j.shape == x.shape and j.min() >= 0 and j.max() <= 16
    assert set(np.unique(j[1::6])) <= {0.0, 16.0} and set(np.unique(j[2::6])) <= {0.0, 16.0}
    # Shuffled digits keep some real digit's pixel values, in another order.
    sorted_real = {tuple(np.sort(row)) for row in x}
    assert all(tuple(np.sort(row)) in sorted_real for row in j[4::6])


def test_a_missing_class_is_a_clear_error():
    x, y = data.load_halves(0)["reward"]
    with pytest.raises(ValueError, match=r"no example of digit\(s\) \[3\]"):
        DigitReward(x[y != 3], y[y != 3])


def test_realism_check_accepts_real_digits_and_rejects_noise():
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
