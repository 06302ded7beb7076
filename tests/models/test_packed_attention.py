"""Packed rows in the model (segment ids): each example's logits equal its unpacked logits, no
token's output depends on another example's tokens (a gradient probe: exactly 0), positions
restart per segment, and the KV-cached path refuses segment ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KVCache
from jaxalign.models.llama import init_model, positions_from_segments

CFG = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _packed(lengths, pad=3, seed=0):
    """A row [1, S] holding random sequences of ``lengths`` back to back, then ``pad`` pads."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in lengths]
    ids = np.concatenate(seqs + [np.zeros(pad, np.int32)])[None]
    seg = np.concatenate([np.full(n, i + 1, np.int32) for i, n in enumerate(lengths)] + [np.zeros(pad, np.int32)])[None]
    return seqs, jnp.asarray(ids), jnp.asarray((seg > 0).astype(np.int32)), jnp.asarray(seg)


def test_positions_restart_per_segment():
    seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_segments(seg),
                                  [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])


@pytest.mark.parametrize("window", [None, 3])
def test_packed_logits_equal_each_example_alone(window):
    cfg = CFG.replace(sliding_window=window)
    model = init_model(cfg, seed=1)
    seqs, ids, attn, seg = _packed([5, 9, 1, 7])
    packed = np.asarray(model(ids, attn, segment_ids=seg))[0]
    start = 0
    for x in seqs:
        alone = np.asarray(model(jnp.asarray(x)[None], jnp.ones((1, len(x)), jnp.int32)))[0]
        np.testing.assert_allclose(packed[start:start + len(x)], alone, atol=1e-5, rtol=0)
        start += len(x)
    # The mask is what makes them equal: without segment ids the later examples change.
    plain = np.asarray(model(ids, attn))[0]
    assert np.abs(plain[5:14] - packed[5:14]).max() > 1e-3


def test_no_token_attends_across_examples_gradient_probe():
    """d(loss of example A) / d(embeddings of every other example's tokens) is exactly 0, and
    nonzero for A's own earlier tokens (the probe can fail)."""
    model = init_model(CFG, seed=2)
    lengths = [6, 4, 8]
    _, ids, attn, seg = _packed(lengths, pad=2)
    emb = model.embed(ids)
    bounds = np.cumsum([0] + lengths)
    for a in range(len(lengths)):
        lo, hi = bounds[a], bounds[a + 1]

        def loss(e):
            logits = model(attention_mask=attn, inputs_embeds=e, segment_ids=seg)
            return jnp.sum(jax.nn.log_softmax(logits[0, lo:hi].astype(jnp.float32))[:, 0])

        g = np.asarray(jax.grad(loss)(emb))[0]
        others = np.ones(ids.shape[1], bool)
        others[lo:hi] = False
        assert np.all(g[others] == 0.0), f"example {a} sees other tokens"
        assert np.abs(g[lo:hi]).min(axis=-1).max() > 0  # its own tokens do matter


def test_cache_with_segment_ids_is_refused():
    model = init_model(CFG)
    with pytest.raises(ValueError, match="segment_ids"):
        model(jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32), cache=KVCache.init(CFG, 1, 4),
              segment_ids=jnp.ones((1, 2), jnp.int32))


def _shared_row(prompt=5, rest=(4, 6), pad=2, seed=3):
    """One row [prompt][rest 0][rest 1][pad]: segments 9 (the prompt), 1, 2; both rests attend to
    the prompt (prefix id 9) and are positioned after it. Returns the full sequences too."""
    rng = np.random.default_rng(seed)
    p = rng.integers(1, CFG.vocab_size, prompt).astype(np.int32)
    rests = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in rest]
    ids = np.concatenate([p, *rests, np.zeros(pad, np.int32)])[None]
    seg = np.concatenate([np.full(prompt, 9), np.full(rest[0], 1), np.full(rest[1], 2), np.zeros(pad)])[None]
    pre = np.concatenate([np.zeros(prompt), np.full(sum(rest), 9), np.zeros(pad)])[None]
    pos = np.concatenate([np.arange(prompt), prompt + np.arange(rest[0]), prompt + np.arange(rest[1]),
                          np.zeros(pad)])[None]
    row = dict(input_ids=ids, attention_mask=(seg > 0), segment_ids=seg, prefix_ids=pre, positions=pos)
    row = {k: jnp.asarray(v, jnp.int32) for k, v in row.items()}
    return [np.concatenate([p, r]) for r in rests], row


@pytest.mark.parametrize("window", [None, 4])
def test_shared_prefix_logits_equal_each_sequence_alone(window):
    """Both sequences of a shared-prompt row get their unpacked logits (the sliding window
    counts positions: with 4, the second rest must not see the first rest's tokens in its
    window, nor lose the prompt's last tokens)."""
    model = init_model(CFG.replace(sliding_window=window), seed=4)
    seqs, row = _shared_row()
    packed = np.asarray(model(**row))[0]
    spans = [(0, 9), (9, 15)]  # the rests' slots; the prompt's are slots 0-4
    for x, (lo, hi) in zip(seqs, spans):
        alone = np.asarray(model(jnp.asarray(x)[None], jnp.ones((1, len(x)), jnp.int32)))[0]
        if lo == 0:
            np.testing.assert_allclose(packed[:hi], alone, atol=1e-5, rtol=0)
        else:
            np.testing.assert_allclose(packed[lo:hi], alone[5:], atol=1e-5, rtol=0)
    # Without the prefix ids the second sequence loses its prompt: its logits change.
    cut = np.asarray(model(**dict(row, prefix_ids=jnp.zeros_like(row["prefix_ids"]))))[0]
    assert np.abs(cut[9:15] - packed[9:15]).max() > 1e-3


def test_shared_prefix_gradient_probe():
    """The second sequence's loss has an exactly zero gradient with respect to the first one's
    own tokens and the padding, and a nonzero one with respect to the shared prompt's."""
    model = init_model(CFG, seed=5)
    _, row = _shared_row()
    emb = model.embed(row["input_ids"])
    rest = {k: v for k, v in row.items() if k != "input_ids"}

    def loss(e):
        logits = model(inputs_embeds=e, **rest)
        return jnp.sum(jax.nn.log_softmax(logits[0, 9:15].astype(jnp.float32))[:, 0])

    g = np.abs(np.asarray(jax.grad(loss)(emb))[0]).max(axis=-1)
    assert np.all(g[5:9] == 0.0) and np.all(g[15:] == 0.0)
    assert np.all(g[:5] > 0) and np.all(g[9:15] > 0)


def test_prefix_ids_need_segment_ids():
    model = init_model(CFG)
    with pytest.raises(ValueError, match="segment_ids"):
        model(jnp.ones((1, 2), jnp.int32), prefix_ids=jnp.ones((1, 2), jnp.int32))
