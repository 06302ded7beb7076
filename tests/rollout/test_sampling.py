"""Sampling: the top-k / top-p filters, determinism, limits (top_k=1, T -> 0) and the
empirical distribution of draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxalign import forward_logits
from jaxalign.rollout import filter_logits, generate, top_k_filter, top_p_filter
from jaxalign.rollout.sampling import first_argmax

from .conftest import ragged_prompts

PAD = 0
T_NEW = 12


def kept(x):
    return set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())


def test_top_k_filter_by_hand():
    x = jnp.array([[0.1, 3.0, -1.0, 2.0, 2.5], [5.0, 5.0, 1.0, 5.0, 0.0]])
    out = top_k_filter(x, 2)
    assert kept(out[0]) == {1, 4} and kept(out[1]) == {0, 1, 3}  # ties with the k-th are kept
    np.testing.assert_array_equal(np.asarray(out[0])[[1, 4]], [3.0, 2.5])
    assert kept(top_k_filter(x, 5)[0]) == set(range(5))
    with pytest.raises(ValueError):
        top_k_filter(x, 0)


def test_top_p_filter_by_hand():
    # probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 in shuffled order
    probs = np.array([0.125, 0.5, 0.0625, 0.25, 0.0625])
    x = jnp.log(jnp.asarray(probs, jnp.float32))
    assert kept(top_p_filter(x, 0.3)) == {1}             # the top token alone reaches 0.3
    assert kept(top_p_filter(x, 0.6)) == {1, 3}          # 0.5 < 0.6 <= 0.75
    assert kept(top_p_filter(x, 0.8)) == {1, 3, 0}       # 0.75 < 0.8 <= 0.875
    assert kept(top_p_filter(x, 0.9)) == {0, 1, 2, 3, 4}  # the two 0.0625 tie: both kept
    assert kept(top_p_filter(x, 1.0)) == {0, 1, 2, 3, 4}
    assert kept(top_p_filter(x, 1e-6)) == {1}            # never empty
    # the kept logits are unchanged (the softmax renormalises them)
    np.testing.assert_array_equal(np.asarray(top_p_filter(x, 0.6))[[1, 3]], np.asarray(x)[[1, 3]])


def test_top_p_matches_numpy_and_transformers():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (64, 50)).astype(np.float32)
    ps = rng.uniform(0.05, 0.99, 64).astype(np.float32)
    for i in range(64):
        got = kept(top_p_filter(jnp.asarray(logits[i]), ps[i]))
        pr = np.exp(logits[i] - logits[i].max())
        pr /= pr.sum()
        order = np.argsort(-pr)
        n = int(np.searchsorted(np.cumsum(pr[order]), ps[i]) + 1)  # smallest prefix with mass >= p
        assert got == set(order[:n].tolist())
        ref = TopPLogitsWarper(float(ps[i]))(None, torch.tensor(logits[i:i + 1]))
        assert got == kept(ref.numpy()[0])
    ref = TopKLogitsWarper(7)(None, torch.tensor(logits))
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_k_filter(jnp.asarray(logits), 7))),
                                  np.isfinite(ref.numpy()))


def test_filter_order_is_temperature_then_top_k_then_top_p():
    x = jnp.asarray([[4.0, 3.0, 2.0, 1.0, 0.0]])
    # at T=0.5 the top-2 renormalised masses are 0.88 / 0.12: p=0.85 keeps 1 token, p=0.9 keeps 2
    assert kept(filter_logits(x, 0.5, top_k=2, top_p=0.85)[0]) == {0}
    assert kept(filter_logits(x, 0.5, top_k=2, top_p=0.9)[0]) == {0, 1}
    np.testing.assert_allclose(np.asarray(filter_logits(x, 0.5)), np.asarray(x) / 0.5)


@pytest.fixture(scope="module")
def prompts():
    return ragged_prompts(n=4, max_len=11, seed=1)


def run(model, prompts, key, **kw):
    ids, mask = prompts
    kw.setdefault("temperature", 1.0)
    return generate(model, ids, mask, key, max_new_tokens=T_NEW, eos_token_ids=(), pad_token_id=PAD, **kw)


def test_fixed_key_is_deterministic(model, prompts):
    a = run(model, prompts, jax.random.key(0))
    b = run(model, prompts, jax.random.key(0))
    c = run(model, prompts, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_top_k_1_and_tiny_temperature_equal_greedy(model, prompts):
    g = run(model, prompts, None, greedy=True)
    k1 = run(model, prompts, jax.random.key(0), top_k=1)
    np.testing.assert_array_equal(np.asarray(k1.tokens), np.asarray(g.tokens))
    # top-k does not change the reported log-probs (full softmax at T=1 in both)
    assert np.abs(np.asarray(k1.logprobs) - np.asarray(g.logprobs)).max() < 1e-6
    cold = run(model, prompts, jax.random.key(0), temperature=1e-3)
    np.testing.assert_array_equal(np.asarray(cold.tokens), np.asarray(g.tokens))
    assert np.abs(np.asarray(cold.logprobs)).max() < 1e-3  # the argmax has mass ~1 at T -> 0
    zero = run(model, prompts, jax.random.key(0), temperature=0.0)  # 0 means greedy
    np.testing.assert_array_equal(np.asarray(zero.tokens), np.asarray(g.tokens))
    hot = run(model, prompts, jax.random.key(0), temperature=1.0)
    assert (np.asarray(hot.tokens) != np.asarray(g.tokens)).any()


def chi_square_pvalue(counts, probs):
    """Pearson chi-square p-value; bins with expected count < 5 are pooled (standard rule)."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
        assert counts[small].sum() == 0
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return stats.chi2.sf(chi2, len(obs) - 1)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=6),
                                dict(temperature=1.5, top_p=0.8)], ids=["T1", "T0.7-k6", "T1.5-p0.8"])
def test_first_step_frequencies_match_softmax(model, kw):
    """4000 draws of the first token vs the (filtered, renormalised) softmax of the forward.

    A fixed seed makes the test deterministic; with a 1e-3 threshold a correct sampler fails
    for one seed in a thousand, a wrong distribution (e.g. unscaled, or unfiltered) fails always.
    """
    n = 4000
    ids = np.array([[5, 17, 42, 8]], np.int32)
    mask = np.ones_like(ids)
    r = generate(model, ids, mask, jax.random.key(123), max_new_tokens=1, eos_token_ids=(),
                 pad_token_id=PAD, num_samples=n, **kw)
    draws = np.asarray(r.completion_ids[:, 0])
    logits = forward_logits(model, ids, mask)[0, -1]
    filt = filter_logits(logits, kw["temperature"], top_k=kw.get("top_k"), top_p=kw.get("top_p"))
    probs = np.asarray(jax.nn.softmax(filt.astype(jnp.float64) if jax.config.x64_enabled else filt))
    probs = probs.astype(np.float64) / probs.sum()
    counts = np.bincount(draws, minlength=probs.size)
    assert counts[probs == 0].sum() == 0, "drew a filtered-out token"
    assert (probs > 0).sum() > 3, "the test distribution should not be degenerate"
    assert chi_square_pvalue(counts, probs) > 1e-3
    # and the reported log-probs are those of the unfiltered softmax at T
    full = np.asarray(jax.nn.log_softmax(logits / kw["temperature"]))
    assert np.abs(np.asarray(r.logprobs[:, 0]) - full[draws]).max() < 1e-5


def test_first_argmax_equals_numpy_argmax_with_ties_and_nan():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    x[3, [7, 100, 200]] = 9.0  # ties: the first one wins
    x[5, [50, 60]] = np.nan  # NaN: the first NaN wins (as np.argmax / jnp.argmax)
    x[6, :] = -np.inf
    x[7, [0, 299]] = [np.inf, np.inf]
    got = np.asarray(first_argmax(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32 and (got[3], got[5], got[6], got[7]) == (7, 50, 0, 0)
