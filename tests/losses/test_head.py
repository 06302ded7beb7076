"""Tests for jaxalign/losses/head.py: the chunked head against the plain full-logits path
(``jax.nn.log_softmax`` of ``softcap(h @ W.T) / T`` written here), values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import head
from jaxalign.losses.logprobs import shifted_token_logprobs


def full_logprobs(h, w, targets, cap=None, temperature=1.0):
    """The plain path: every logit materialised, then log_softmax and a gather."""
    z = jnp.einsum("...nd,vd->...nv", h, w)
    if cap is not None:
        z = cap * jnp.tanh(z / cap)
    return jnp.take_along_axis(jax.nn.log_softmax(z / temperature, axis=-1), targets[..., None], -1)[..., 0]


def make(seed=0, lead=(3,), n=13, d=8, v=37):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((*lead, n, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((v, d)) * 0.7, jnp.float32)
    t = jnp.asarray(rng.integers(0, v, (*lead, n)), jnp.int32)
    g = jnp.asarray(rng.standard_normal((*lead, n)), jnp.float32)  # a random cotangent
    return h, w, t, g


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
@pytest.mark.parametrize("cap,temperature", [(None, 1.0), (2.5, 0.7)])
def test_values_and_gradients_equal_full_logits(chunk, cap, temperature):
    h, w, t, g = make()

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w) * g)

    chunked = lambda h, w: head.head_token_logprobs(h, w, t, chunk_size=chunk, softcap=cap, temperature=temperature)
    full = lambda h, w: full_logprobs(h, w, t, cap, temperature)
    np.testing.assert_allclose(jax.jit(chunked)(h, w), full(h, w), atol=1e-5, rtol=1e-5)
    got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1)))(h, w)
    want = jax.grad(loss(full), argnums=(0, 1))(h, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_gradient_in_temperature():
    h, w, t, g = make(seed=1, lead=(2, 2))
    f = lambda temp, fn: jnp.sum(fn(temp) * g)
    got = jax.grad(f)(0.8, lambda T: head.head_token_logprobs(h, w, t, chunk_size=3, softcap=3.0, temperature=T))
    want = jax.grad(f)(0.8, lambda T: full_logprobs(h, w, t, 3.0, T))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_tied_embeddings():
    """One table both embeds the inputs and projects the outputs: its gradient is the sum of
    both uses, the head's part coming from the custom VJP."""
    rng = np.random.default_rng(2)
    v, d = 29, 6
    e = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
    mix = jnp.asarray(rng.standard_normal((d, d)) * 0.5, jnp.float32)
    ids = jnp.asarray(rng.integers(0, v, (2, 9)), jnp.int32)
    tg = jnp.roll(ids, -1, axis=1)

    def loss(e, fn):
        h = jnp.tanh(jnp.take(e, ids, axis=0) @ mix)
        return -jnp.sum(fn(h, e))

    got = jax.grad(loss)(e, lambda h, e: head.head_token_logprobs(h, e, tg, chunk_size=4))
    want = jax.grad(loss)(e, lambda h, e: full_logprobs(h, e, tg))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_n_valid_computes_only_leading_positions():
    h, w, t, g = make(seed=3, n=12)
    f = jax.jit(lambda h, w, k: head.head_token_logprobs(h, w, t, chunk_size=4, n_valid=k))
    full = full_logprobs(h, w, t)
    out = f(h, w, 5)  # rounded up to two chunks: positions 0..7 computed
    np.testing.assert_allclose(out[:, :8], full[:, :8], atol=1e-5)
    np.testing.assert_array_equal(out[:, 8:], 0.0)
    dh, dw = jax.grad(lambda h, w: jnp.sum(f(h, w, 5) * g), argnums=(0, 1))(h, w)
    want_dh, want_dw = jax.grad(lambda h, w: jnp.sum(full_logprobs(h[:, :8], w, t[:, :8]) * g[:, :8]),
                                argnums=(0, 1))(h, w)
    np.testing.assert_allclose(dh, want_dh, atol=1e-5)
    np.testing.assert_allclose(dw, want_dw, atol=1e-5)


def test_bfloat16_head_equals_the_models_rounding():
    """Compute dtype bfloat16: logits rounded to bfloat16 (as the models' ``mm``), log-probs in
    float32, as ``shifted_token_logprobs`` of the bfloat16 logits."""
    h, w, t, _ = make(seed=4, n=10, d=16, v=64)
    z = jnp.einsum("bnd,vd->bnv", h.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                   preferred_element_type=jnp.float32).astype(jnp.bfloat16)
    z = 2.0 * jnp.tanh(z / 2.0)
    want = jnp.take_along_axis(jax.nn.log_softmax(z.astype(jnp.float32), -1), t[..., None], -1)[..., 0]
    got = head.head_token_logprobs(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), t, chunk_size=3, softcap=2.0)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_completion_positions_equal_full_head(chunk):
    """The completion-only head (gather before the head) equals the full head's shifted
    log-probs at the completion positions, is 0 elsewhere, and has the same gradients."""
    rng = np.random.default_rng(5)
    b, s, d, v = 4, 11, 8, 31
    h = jnp.asarray(rng.standard_normal((b, s, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, v, (b, s)), jnp.int32)
    mask = rng.random((b, s)) < 0.4
    mask[1] = False  # a row with nothing to score
    mask[2, 3:] = True  # a prompt then a completion
    mask[:, 0] = False
    mask = jnp.asarray(mask)

    def full(h, w):
        return shifted_token_logprobs(jnp.einsum("bsd,vd->bsv", h, w), ids)

    def part(h, w):
        return head.completion_logprobs_from_hidden(h, w, ids, mask, chunk_size=chunk)

    got = jax.jit(part)(h, w)
    np.testing.assert_allclose(got, jnp.where(mask, full(h, w), 0.0), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[~np.asarray(mask)], 0.0)
    loss = lambda fn: lambda h, w: -jnp.sum(jnp.where(mask, fn(h, w), 0.0))
    for a, b_ in zip(jax.jit(jax.grad(loss(part), argnums=(0, 1)))(h, w), jax.grad(loss(full), argnums=(0, 1))(h, w)):
        np.testing.assert_allclose(a, b_, atol=1e-5)


def test_bad_chunk_size():
    h, w, t, _ = make()
    with pytest.raises(ValueError, match="chunk_size"):
        head.head_token_logprobs(h, w, t, chunk_size=0)


def full_entropy(h, w, cap=None, temperature=1.0):
    """``H = -Σ_v p_v log p_v`` of ``softmax(softcap(h @ W.T) / T)``, written out."""
    z = jnp.einsum("...nd,vd->...nv", h, w)
    if cap is not None:
        z = cap * jnp.tanh(z / cap)
    logp = jax.nn.log_softmax(z / temperature, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@pytest.mark.parametrize("chunk", [4, 13])
@pytest.mark.parametrize("cap,temperature", [(None, 1.0), (2.5, 0.7)])
def test_entropy_from_the_same_chunks_equals_full_entropy_and_carries_no_gradient(chunk, cap, temperature):
    """``with_entropy``: each position's entropy from the chunk's logits, and the log-probs'
    gradient exactly as without it (the entropy is a metric: a cotangent on it changes nothing)."""
    h, w, t, g = make(seed=3)
    kw = dict(chunk_size=chunk, softcap=cap, temperature=temperature)
    lp, ent = jax.jit(lambda h, w: head.head_token_logprobs(h, w, t, with_entropy=True, **kw))(h, w)
    np.testing.assert_allclose(lp, full_logprobs(h, w, t, cap, temperature), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, full_entropy(h, w, cap, temperature), atol=1e-5, rtol=1e-5)

    def with_ent(h, w):
        lp, ent = head.head_token_logprobs(h, w, t, with_entropy=True, **kw)
        return jnp.sum(lp * g) + 10.0 * jnp.sum(ent)

    plain = lambda h, w: jnp.sum(head.head_token_logprobs(h, w, t, **kw) * g)
    # Two programs, so equal up to code generation (1 ulp under XLA:CPU's optimisation level 0);
    # an entropy that leaked its gradient (x 10) would be off by orders of magnitude more.
    for a, b in zip(jax.grad(with_ent, argnums=(0, 1))(h, w), jax.grad(plain, argnums=(0, 1))(h, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_completion_entropy_sits_on_the_completion_tokens():
    """``completion_logprobs_from_hidden(..., with_entropy=True)``: the entropy aligned as
    ``entropy_from_logits(shifted=True)`` on the masked tokens, 0 elsewhere."""
    from jaxalign.losses.logprobs import entropy_from_logits

    h, w, ids, _ = make(seed=4, n=11)
    mask = jnp.asarray(np.random.default_rng(5).random(ids.shape) < 0.5).at[:, 0].set(False)
    lp, ent = head.completion_logprobs_from_hidden(h, w, ids, mask, chunk_size=3, with_entropy=True)
    want = entropy_from_logits(jnp.einsum("bnd,vd->bnv", h, w), shifted=True)
    np.testing.assert_allclose(np.where(mask, ent, 0.0), np.where(mask, want, 0.0), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ent)[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(np.where(mask, lp, 0.0),
                               np.where(mask, shifted_token_logprobs(jnp.einsum("bnd,vd->bnv", h, w), ids), 0.0),
                               atol=1e-5)
