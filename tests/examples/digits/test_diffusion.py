"""The diffusion pieces against closed forms: the cosine schedule, the denoising loss (exact on a
given noise, and its expectation for a linear predictor), DDIM's fixed point for a point mass."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.examples.digits import diffusion


def test_cosine_alpha_bar_matches_the_formula():
    T, s = 20, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    got = np.asarray(diffusion.cosine_alpha_bar(T))
    want = np.array([f(t) / f(0) for t in range(1, T + 1)])
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5)
    # f(T) = 0 would make the last β 1; it is capped at 0.999.
    np.testing.assert_allclose(got[-1], want[-2] * 0.001, rtol=1e-4)
    assert np.all(np.diff(got) < 0)


def test_denoising_loss_is_the_weighted_mse_of_the_noise():
    rng = np.random.default_rng(0)
    ab = diffusion.cosine_alpha_bar(10)
    x0 = rng.normal(size=(5, 3)).astype(np.float32)
    noise = rng.normal(size=(5, 3)).astype(np.float32)
    t = np.array([0, 3, 9, 5, 2])
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.5], np.float32)
    eps_fn = lambda x, tt, y: 0.5 * x  # a linear predictor, so the residual is known in numpy
    loss, total = diffusion.denoising_loss(eps_fn, x0, np.zeros(5, np.int32), t, noise, ab, w)
    a = np.asarray(ab)[t][:, None]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    per = ((noise - 0.5 * xt) ** 2).mean(-1)
    np.testing.assert_allclose(float(loss), (w * per).sum() / w.sum(), rtol=1e-5)
    assert float(total) == pytest.approx(w.sum())


def test_denoising_loss_expectation_closed_form():
    # ε̂ = x_t: residual = −√a·x0 + (1 − √(1−a))·ε, so E[L] = a·x0² + (1 − √(1−a))² (ε ~ N(0, 1)).
    ab = diffusion.cosine_alpha_bar(10)
    n, t_idx, c = 50_000, 4, 0.7
    noise = jax.random.normal(jax.random.key(1), (n, 1))
    x0 = jnp.full((n, 1), c)
    loss, _ = diffusion.denoising_loss(lambda x, t, y: x, x0, jnp.zeros(n, jnp.int32), jnp.full(n, t_idx),
                                       noise, ab)
    a = float(ab[t_idx])
    assert float(loss) == pytest.approx(a * c * c + (1 - math.sqrt(1 - a)) ** 2, rel=3e-2)


def _point_mass_eps(c, ab):
    # The exact ε-predictor of data concentrated at c: ε = (x_t − √ᾱ c)/√(1−ᾱ).
    return lambda x, t, y: (x - jnp.sqrt(ab[t])[:, None] * c) / jnp.sqrt(1 - ab[t])[:, None]


def test_optimal_denoiser_of_a_point_mass_has_zero_loss():
    ab = diffusion.cosine_alpha_bar(50)
    c = jnp.array([0.3, -0.2])
    noise = jax.random.normal(jax.random.key(0), (64, 2))
    t = jax.random.randint(jax.random.key(1), (64,), 0, 50)
    loss, _ = diffusion.denoising_loss(_point_mass_eps(c, ab), jnp.tile(c, (64, 1)), jnp.zeros(64, jnp.int32),
                                       t, noise, ab)
    assert float(loss) < 1e-8


@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_with_the_exact_denoiser_returns_the_point(clip):
    ab = diffusion.cosine_alpha_bar(50)
    c = jnp.array([0.3, -0.2, 0.9])
    x = diffusion.ddim_sample(_point_mass_eps(c, ab), jax.random.key(3), jnp.zeros(6, jnp.int32), ab, dim=3,
                              steps=10, null_label=1, clip=clip)
    np.testing.assert_allclose(np.asarray(x), np.tile(np.asarray(c), (6, 1)), atol=1e-4)


def test_sampler_is_deterministic_for_a_key():
    ab = diffusion.cosine_alpha_bar(30)
    eps_fn = lambda x, t, y: jnp.tanh(x + 0.1 * y[:, None] - 0.01 * t[:, None])
    labels = jnp.arange(4) % 2
    run = lambda key, g: diffusion.ddim_sample(eps_fn, key, labels, ab, dim=5, steps=8, null_label=2, guidance=g)
    a, b = run(jax.random.key(7), 3.0), run(jax.random.key(7), 3.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(run(jax.random.key(8), 3.0)))
    # Guidance changes the sample when the prediction depends on the label...
    assert not np.allclose(np.asarray(a), np.asarray(run(jax.random.key(7), 1.0)))


def test_guidance_is_a_no_op_when_the_label_is_ignored():
    # ε_∅ + s(ε_y − ε_∅) = ε_y when both are equal.
    ab = diffusion.cosine_alpha_bar(30)
    eps_fn = lambda x, t, y: jnp.tanh(x - 0.01 * t[:, None])
    run = lambda g: diffusion.ddim_sample(eps_fn, jax.random.key(0), jnp.arange(3), ab, dim=4, steps=6,
                                          null_label=3, guidance=g)
    np.testing.assert_allclose(np.asarray(run(3.0)), np.asarray(run(1.0)), atol=1e-6)
