"""generate(): log-probs equal the teacher-forced forward, output layout, EOS handling, the
KV-cached loop against full recomputation, and the order of samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import forward_logits
from jaxalign.losses.logprobs import shifted_token_logprobs
from jaxalign.rollout import Rollout, generate

from .conftest import first_eos_index, ragged_prompts, teacher_forced_logprobs

T_NEW = 12
PAD = 0


@pytest.fixture(scope="module")
def prompts():
    return ragged_prompts(n=4, max_len=11)


@pytest.fixture(scope="module")
def free_run(model, prompts):
    """Sampling with no EOS: the reference sequences from which EOS ids are planted."""
    ids, mask = prompts
    return generate(model, ids, mask, jax.random.key(3), max_new_tokens=T_NEW, temperature=0.8,
                    eos_token_ids=(), pad_token_id=PAD)


def plant_eos(free_run, n_ids=1):
    """EOS ids that appear in some (not all) rows, at different first positions."""
    comp = np.asarray(free_run.completion_ids)
    best = []
    for tok in np.unique(comp):
        firsts = [first_eos_index(r, [tok]) for r in comp]
        hit = [f for f in firsts if f is not None]
        best.append((len(set(hit)) + (len(hit) < len(comp)), int(tok)))
    best.sort(reverse=True)
    return tuple(t for _, t in best[:n_ids])


def check_eos_layout(r: Rollout, ref_comp, eos_ids, pad_id):
    """Against the no-EOS run with the same key: identical up to the first EOS, pad after."""
    comp, gm = np.asarray(r.completion_ids), np.asarray(r.generated_mask)
    lps, fin, lens = np.asarray(r.logprobs), np.asarray(r.finished), np.asarray(r.lengths)
    for i in range(comp.shape[0]):
        e = first_eos_index(ref_comp[i], eos_ids)
        n = T_NEW if e is None else e + 1
        np.testing.assert_array_equal(comp[i, :n], ref_comp[i, :n])
        assert (comp[i, n:] == pad_id).all() and (gm[i, n:] == 0).all() and (lps[i, n:] == 0).all()
        assert (gm[i, :n] == 1).all()
        assert lens[i] == n and fin[i] == (e is not None)
    return lens, fin


def test_logprobs_equal_teacher_forced_forward(model, prompts, free_run):
    ids, mask = prompts
    eos = plant_eos(free_run)
    for kw in (dict(temperature=0.8), dict(temperature=1.3, top_k=7, top_p=0.8)):
        r = generate(model, ids, mask, jax.random.key(3), max_new_tokens=T_NEW, eos_token_ids=eos,
                     pad_token_id=PAD, **kw)
        lens, fin = np.asarray(r.lengths), np.asarray(r.finished)
        ref = teacher_forced_logprobs(model, r.tokens, r.attention_mask, kw["temperature"])
        cm = np.asarray(r.completion_mask)
        got = np.asarray(r.aligned_logprobs())
        assert np.abs(np.where(cm > 0, ref, 0) - got).max() < 1e-4
        assert (got[cm == 0] == 0).all()
        # The library's training-side function gives the same numbers.
        train = shifted_token_logprobs(forward_logits(model, r.tokens, r.attention_mask), r.tokens,
                                       temperature=kw["temperature"])
        assert np.abs(np.where(cm > 0, np.asarray(train), 0) - got).max() < 1e-4
    # the planted EOS makes rows stop at different steps, and some rows never stop
    assert fin.any() and not fin.all() and len(set(lens[fin].tolist())) >= 2, (lens, fin)


def test_output_layout(model, prompts, free_run):
    ids, mask = prompts
    r = free_run
    n, p = ids.shape
    assert r.tokens.shape == r.attention_mask.shape == r.completion_mask.shape == (n, p + T_NEW)
    assert r.logprobs.shape == (n, T_NEW) and r.logprobs.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(r.tokens[:, :p]), ids)
    np.testing.assert_array_equal(np.asarray(r.attention_mask[:, :p]), mask)
    assert (np.asarray(r.completion_mask[:, :p]) == 0).all()
    assert (np.asarray(r.lengths) == T_NEW).all() and not np.asarray(r.finished).any()
    assert (np.asarray(r.logprobs) < 0).all()
    leaves = jax.tree.leaves(r)
    assert len(leaves) == 6  # prompt_length is static metadata


def test_eos_stops_and_pads(model, prompts, free_run):
    ids, mask = prompts
    ref = np.asarray(free_run.completion_ids)
    eos = plant_eos(free_run)
    r = generate(model, ids, mask, jax.random.key(3), max_new_tokens=T_NEW, temperature=0.8,
                 eos_token_ids=eos[0], pad_token_id=PAD)
    lens, fin = check_eos_layout(r, ref, eos, PAD)
    assert fin.any() and not fin.all()


def test_multiple_eos_ids_and_pad_equal_to_eos(model, prompts, free_run):
    ids, mask = prompts
    ref = np.asarray(free_run.completion_ids)
    eos = plant_eos(free_run, n_ids=2)
    # pad == an EOS id: masks come from what was generated, not from token values
    r = generate(model, ids, mask, jax.random.key(3), max_new_tokens=T_NEW, temperature=0.8,
                 eos_token_ids=list(eos), pad_token_id=eos[1])
    lens, fin = check_eos_layout(r, ref, eos, eos[1])
    one = [first_eos_index(row, eos[:1]) for row in ref]
    both = [first_eos_index(row, eos) for row in ref]
    assert one != both  # the second id really ends some row earlier


def test_stops_early_when_all_finished(model, prompts):
    ids, mask = prompts
    greedy = generate(model, ids, mask, None, max_new_tokens=4, greedy=True, eos_token_ids=(),
                      pad_token_id=PAD)
    # every row's first greedy token as EOS: all finish at step 0, the rest is padding
    firsts = np.unique(np.asarray(greedy.completion_ids[:, 0]))
    r = generate(model, ids, mask, None, max_new_tokens=T_NEW, greedy=True,
                 eos_token_ids=firsts.tolist(), pad_token_id=PAD)
    assert np.asarray(r.finished).all() and (np.asarray(r.lengths) == 1).all()
    assert (np.asarray(r.completion_ids[:, 1:]) == PAD).all()


def test_greedy_equals_naive_recompute(model, prompts):
    """The KV-cached loop equals argmax decoding that re-runs the full forward every step."""
    ids, mask = prompts
    r = generate(model, ids, mask, None, max_new_tokens=8, greedy=True, eos_token_ids=(),
                 pad_token_id=PAD, temperature=0.5)
    p = ids.shape[1]
    # One fixed shape (future slots right-padded): causal attention keeps them out of the past.
    seq = np.concatenate([ids, np.zeros((ids.shape[0], 8), np.int32)], axis=1)
    m = np.concatenate([mask, np.zeros((ids.shape[0], 8), np.int32)], axis=1)
    for t in range(8):
        seq[:, p + t] = np.argmax(np.asarray(forward_logits(model, seq, m))[:, p + t - 1], axis=-1)
        m[:, p + t] = 1
    np.testing.assert_array_equal(np.asarray(r.tokens), seq)
    # greedy log-probs are at the given temperature
    ref = teacher_forced_logprobs(model, r.tokens, r.attention_mask, 0.5)
    assert np.abs(ref[:, ids.shape[1]:] - np.asarray(r.logprobs)).max() < 1e-4


def test_num_samples_order_and_shared_prefill(model, prompts):
    ids, mask = prompts
    key = jax.random.key(11)
    kw = dict(max_new_tokens=6, temperature=1.0, eos_token_ids=(), pad_token_id=PAD)
    r = generate(model, ids, mask, key, num_samples=3, **kw)
    assert r.tokens.shape[0] == 3 * ids.shape[0]
    # rows b*3 .. b*3+2 are the samples of prompt b
    np.testing.assert_array_equal(np.asarray(r.tokens[:, :ids.shape[1]]), np.repeat(ids, 3, axis=0))
    # one prefill + repeated cache == the prompts repeated in the batch (same per-row keys)
    rep = generate(model, np.repeat(ids, 3, axis=0), np.repeat(mask, 3, axis=0), key, **kw)
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(rep.tokens))
    assert np.abs(np.asarray(r.logprobs) - np.asarray(rep.logprobs)).max() < 1e-5
    comp = np.asarray(r.completion_ids).reshape(ids.shape[0], 3, -1)
    for b in range(ids.shape[0]):
        assert len({tuple(s) for s in comp[b]}) > 1, "samples of one prompt should differ"
    g = generate(model, ids, mask, None, num_samples=2, greedy=True, **kw)
    gc = np.asarray(g.completion_ids)
    np.testing.assert_array_equal(gc[0::2], gc[1::2])
