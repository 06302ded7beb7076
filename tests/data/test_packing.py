"""Packing (jaxalign/data/packing.py): every unit in exactly one row and within the row length,
preference pairs never split, masks and segment ids as documented, and a resume inside a packed
epoch bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.data.packing import (PackedBatchIterator, collate_packed, pack, shared_prefix_length, unit_length,
                                   unpacked_sequences)
from jaxalign.algorithms.data_setup import real_tokens
from jaxalign.errors import JaxalignError


def sft_examples(n, seed=0, lo=3, hi=20):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(lo, hi))
        p = int(rng.integers(1, L))
        out.append({"input_ids": rng.integers(5, 50, L).astype(np.int32),
                    "completion_mask": (np.arange(L) >= p).astype(np.int32), "row": i})
    return out


def pref_examples(n, seed=0, lo=2, hi=12, floats=True):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = rng.integers(5, 50, int(rng.integers(1, 6))).astype(np.int32)
        e = {"prompt_ids": p, "row": i}
        for side in ("chosen", "rejected"):
            c = rng.integers(5, 50, int(rng.integers(lo, hi))).astype(np.int32)
            e[f"{side}_ids"] = np.concatenate([p, c])
            e[f"{side}_mask"] = np.concatenate([np.zeros(len(p), np.int32), np.ones(len(c), np.int32)])
        if floats:
            e["margin"] = float(rng.normal())
        out.append(e)
    return out


def test_pack_first_fit_every_unit_once_within_capacity():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 40, 300)
    rows = pack(lengths, 64)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert all(r == sorted(r) for r in rows)  # order kept within a row
    # First fit fills well: fewer rows than one per unit, near the lower bound.
    assert len(rows) < 1.15 * np.ceil(lengths.sum() / 64) + 1
    assert pack(lengths, 64) == rows
    with pytest.raises(JaxalignError, match="does not fit"):
        pack([65], 64)


def test_collate_sft_segments_masks_and_first_token():
    ex = sft_examples(3, seed=2)
    rows = [[0, 1], [2]]
    L = max(len(ex[0]["input_ids"]) + len(ex[1]["input_ids"]), len(ex[2]["input_ids"]))
    b = collate_packed(ex, rows, pad_id=0, length=L)
    n0, n1 = len(ex[0]["input_ids"]), len(ex[1]["input_ids"])
    np.testing.assert_array_equal(b["segment_ids"][0, :n0 + n1], [1] * n0 + [2] * n1)
    assert (b["segment_ids"][0, n0 + n1:] == 0).all()
    np.testing.assert_array_equal(b["input_ids"][0, n0:n0 + n1], ex[1]["input_ids"])
    assert b["attention_mask"][0].sum() == n0 + n1
    expect = np.concatenate([ex[0]["completion_mask"], ex[1]["completion_mask"]])
    expect[0] = expect[n0] = 0  # no prediction for a segment's first token
    np.testing.assert_array_equal(b["completion_mask"][0, :n0 + n1], expect)


def test_collate_preference_pairs_share_their_prompt():
    """Hand-built layout: pair 0's shared prompt (segment 2K + 1), its chosen and rejected rest
    (segments 1, 2) attending to it and positioned after it; pair 1 shares nothing (its
    completion starts at token 1, so no prompt token can be shared); padding 0 everywhere."""
    e0 = {"chosen_ids": [7, 8, 9, 20, 21], "chosen_mask": [0, 0, 0, 1, 1],
          "rejected_ids": [7, 8, 9, 30], "rejected_mask": [0, 0, 0, 1], "margin": 0.5}
    e1 = {"chosen_ids": [5, 40, 41], "chosen_mask": [0, 1, 1],
          "rejected_ids": [5, 50], "rejected_mask": [0, 1], "margin": -1.0}
    b = collate_packed([e0, e1], [[0, 1]], pad_id=0, length=16, max_units=3)
    np.testing.assert_array_equal(b["input_ids"][0], [7, 8, 9, 20, 21, 9, 30, 5, 40, 41, 5, 50, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["segment_ids"][0], [7, 7, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["prefix_ids"][0], [0, 0, 7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["position_ids"][0], [0, 1, 2, 3, 4, 2, 3, 0, 1, 2, 0, 1, 0, 0, 0, 0])
    # each segment's first token is not a loss token; the completions are
    np.testing.assert_array_equal(b["completion_mask"][0], [0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["shared_length"], [[2, 0, 0]])
    np.testing.assert_array_equal(b["pair_valid"], [[1, 1, 0]])
    np.testing.assert_allclose(b["margin"], [[0.5, -1.0, 0.0]])
    assert b["attention_mask"].sum() == 12 and unit_length(e0) == 7 and unit_length(e1) == 5
    assert unpacked_sequences(b) == [[e0["chosen_ids"], e0["rejected_ids"], e1["chosen_ids"], e1["rejected_ids"]]]


@pytest.mark.parametrize("chosen,rejected,cmask,rmask,want", [
    ([1, 2, 3, 4], [1, 2, 3, 5], [0, 0, 0, 1], [0, 0, 0, 1], 2),  # the prompt less its last token
    ([1, 2, 3, 4], [1, 9, 3, 5], [0, 0, 0, 1], [0, 0, 0, 1], 1),  # the prompts differ at token 1
    ([1, 2, 3, 4], [1, 2, 3, 4, 5], [0, 0, 1, 1], [0, 0, 0, 0, 1], 1),  # the earlier completion bounds it
    ([1, 2, 3], [1, 2, 3], [0, 0, 0], [0, 0, 0], 2),  # no completion: each keeps one token
    ([1, 2], [3, 2], [0, 1], [0, 1], 0),
    ([1, 2], [1, 2], [1, 1], [1, 1], 0),
])
def test_shared_prefix_length_hand_cases(chosen, rejected, cmask, rmask, want):
    e = {"chosen_ids": chosen, "rejected_ids": rejected, "chosen_mask": cmask, "rejected_mask": rmask}
    assert shared_prefix_length(e) == want
    assert unit_length(e) == len(chosen) + len(rejected) - want


@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_iterator_epoch_covers_each_unit_once_and_never_splits_a_pair(kind):
    ex = sft_examples(80, seed=4) if kind == "sft" else pref_examples(80, seed=4)
    it = PackedBatchIterator(ex, 4, seed=7, pad_id=0, max_length=32, drop_last=False, num_epochs=1)
    seen = []
    for b in it:
        assert b["input_ids"].shape[0] <= 4
        mine = [tuple(x) for row in unpacked_sequences(b) for x in row]
        # the batch's real tokens count a shared prompt for each of its sequences, as unpacked
        assert real_tokens(b) == sum(len(x) for x in mine)
        if kind == "preference":
            assert b["shared_length"].sum() > 0  # the prompts are shared
        seen += mine
    if kind == "sft":
        want = sorted(tuple(e["input_ids"]) for e in ex)
    else:
        want = sorted([tuple(e["chosen_ids"]) for e in ex] + [tuple(e["rejected_ids"]) for e in ex])
    assert sorted(seen) == want
    if kind == "preference":  # chosen directly followed by its own rejected, in one row
        pairs = {(tuple(e["chosen_ids"]), tuple(e["rejected_ids"])) for e in ex}
        assert set(zip(seen[0::2], seen[1::2])) == pairs


def test_resume_inside_a_packed_epoch_is_bit_exact():
    ex = pref_examples(60, seed=5)
    kw = dict(seed=3, pad_id=0, max_length=24)
    ref = PackedBatchIterator(ex, 2, **kw)
    per = ref.batches_in_epoch(0)
    run = [next(ref) for _ in range(per + 3)]  # into the second epoch
    for cut in (1, per // 2, per, per + 1):
        it = PackedBatchIterator(ex, 2, **kw)
        for _ in range(cut):
            next(it)
        state = it.state_dict()
        fresh = PackedBatchIterator(ex, 2, **kw)
        fresh.load_state_dict(state)
        for want in run[cut:]:
            got = next(fresh)
            assert got.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
    # The epochs differ (reshuffled and repacked) but each is a function of (seed, epoch).
    assert ref._rows(0) != ref._rows(1)


def test_processes_split_rows_and_pad_alike():
    ex = sft_examples(50, seed=6)
    its = [PackedBatchIterator(ex, 4, seed=1, pad_id=0, max_length=32, buckets="pow2",
                               process_index=i, process_count=2) for i in range(2)]
    whole = PackedBatchIterator(ex, 4, seed=1, pad_id=0, max_length=32, buckets="pow2")
    for _ in range(3):
        a, b, w = next(its[0]), next(its[1]), next(whole)
        assert a["input_ids"].shape == b["input_ids"].shape == (2, w["input_ids"].shape[1])
        np.testing.assert_array_equal(np.concatenate([a["input_ids"], b["input_ids"]]), w["input_ids"])


def test_errors_name_config_keys():
    with pytest.raises(JaxalignError, match="data.max_length"):
        PackedBatchIterator(sft_examples(4, lo=30, hi=31), 1, pad_id=0, max_length=16)
    with pytest.raises(JaxalignError, match="train.batch_size"):
        PackedBatchIterator(sft_examples(4), 50, pad_id=0, max_length=64)
    it = PackedBatchIterator(sft_examples(40), 2, pad_id=0, max_length=64)
    with pytest.raises(JaxalignError, match="data.packing"):
        it.load_state_dict({"epoch": 0, "position": 0})
    from jaxalign.data import BatchIterator

    plain = BatchIterator(sft_examples(40), 2, pad_id=0)
    with pytest.raises(JaxalignError, match="data.packing"):
        plain.load_state_dict(it.state_dict())


@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_longest_batch_bounds_every_packed_batch(kind):
    """The memory preflight's batch (train/preflight.py longest_batch) has the packed shape:
    batch_size rows of the full row length and K pair slots, at least every batch's size."""
    from jaxalign.train.preflight import longest_batch

    ex = sft_examples(60, seed=8) if kind == "sft" else pref_examples(60, seed=8)
    it = PackedBatchIterator(ex, 3, seed=2, pad_id=0, max_length=32, buckets="pow2", num_epochs=2)
    big = longest_batch(it)
    cap = 32 if kind == "sft" else 64
    assert big["input_ids"].shape == (3, cap) and big["segment_ids"].shape == (3, cap)
    if kind == "preference":
        assert big["pair_valid"].shape == (3, it.max_units) and big["margin"].shape == (3, it.max_units)
    for b in it:
        assert b.keys() == big.keys()
        for k in b:
            assert all(x <= y for x, y in zip(b[k].shape, big[k].shape)), k
    assert it.state_dict()["epoch"] == 2  # it walked two epochs; longest_batch did not move it
