"""jaxalign.data.batching: masks from lengths, buckets, resumable and per-process iteration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign.data.batching import BatchIterator, bucket_length, collate, train_eval_split
from jaxalign.errors import JaxalignError

EOS = 2


def sft_example(i: int, length: int, prompt: int = 2) -> dict:
    """Ids start with the example's index (to identify it) and end with EOS."""
    ids = [100 + i] + [10 + (i + t) % 50 for t in range(length - 2)] + [EOS]
    mask = [0] * prompt + [1] * (length - prompt)
    return {"input_ids": np.asarray(ids, np.int32), "completion_mask": np.asarray(mask, np.int32), "row": i}


def examples(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[dict]:
    lengths = np.random.default_rng(seed).integers(lo, hi, n)
    return [sft_example(i, int(L)) for i, L in enumerate(lengths)]


def ids_of(batch) -> list[int]:
    return [int(x) - 100 for x in batch["input_ids"][:, 0]]


def test_masks_come_from_lengths_when_pad_equals_eos():
    exs = [sft_example(0, 5), sft_example(1, 9), sft_example(2, 3)]
    b = collate(exs, pad_id=EOS)
    assert b["input_ids"].shape == (3, 9) and all(v.dtype == np.int32 for v in b.values())
    assert b["attention_mask"].sum(1).tolist() == [5, 9, 3]
    assert (b["input_ids"][0, 4:] == EOS).all()  # the real EOS and the padding look alike...
    assert b["attention_mask"][0].tolist() == [1] * 5 + [0] * 4  # ...but only the real one is attended
    assert b["completion_mask"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]  # and trained on


@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.sampled_from(["pow2", [8, 24, 64, 512]]))
@settings(max_examples=50, deadline=None)
def test_buckets_give_only_bucket_lengths(lengths, buckets):
    b = collate([sft_example(i, max(L, 2)) for i, L in enumerate(lengths)], pad_id=0, buckets=buckets)
    s = b["input_ids"].shape[1]
    longest = max(max(L, 2) for L in lengths)
    if buckets == "pow2":
        assert s == max(16, 1 << (longest - 1).bit_length())
    else:
        assert s in buckets and s >= longest and all(x < longest for x in buckets if x < s)


def test_bucket_length_edges():
    assert bucket_length(17, None) == 17
    assert bucket_length(300, "pow2", max_length=384) == 384 and bucket_length(200, "pow2", max_length=384) == 256
    with pytest.raises(JaxalignError, match="longer than the largest bucket"):
        bucket_length(65, [16, 64])
    with pytest.raises(JaxalignError, match="buckets 'pow3'"):
        bucket_length(3, "pow3")


def test_iterator_shapes_repeat_with_buckets():
    it = BatchIterator(examples(64), 8, seed=1, pad_id=0, buckets=[16, 32, 48])
    shapes = {next(it)["input_ids"].shape for _ in range(40)}
    assert shapes <= {(8, 16), (8, 32), (8, 48)}


def test_epochs_are_permutations_and_reproducible():
    exs = examples(20)
    it = BatchIterator(exs, 5, seed=3, pad_id=0)
    epochs = [sorted(sum((ids_of(next(it)) for _ in range(4)), [])) for _ in range(3)]
    assert all(e == list(range(20)) for e in epochs)
    a = [ids_of(next(BatchIterator(exs, 5, seed=3, pad_id=0)))]
    assert a == [ids_of(next(BatchIterator(exs, 5, seed=3, pad_id=0)))]
    it2 = BatchIterator(exs, 5, seed=3, pad_id=0)
    first, second = [ids_of(next(it2)) for _ in range(4)], [ids_of(next(it2)) for _ in range(4)]
    assert first != second  # a new order each epoch
    assert ids_of(next(BatchIterator(exs, 5, seed=3, shuffle=False, pad_id=0))) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("interrupt_at", [0, 1, 3, 4, 7, 11])
def test_resume_gives_the_same_batches(interrupt_at):
    exs = examples(22)  # 4 batches of 5 per epoch, 2 examples dropped each epoch
    full = BatchIterator(exs, 5, seed=7, pad_id=0, buckets="pow2")
    want = [next(full) for _ in range(15)]
    it = BatchIterator(exs, 5, seed=7, pad_id=0, buckets="pow2")
    for _ in range(interrupt_at):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))
    resumed = BatchIterator(exs, 5, seed=7, pad_id=0, buckets="pow2")
    resumed.load_state_dict(state)
    for w in want[interrupt_at:]:
        got = next(resumed)
        assert got.keys() == w.keys() and all(np.array_equal(got[k], w[k]) for k in w)


def test_state_dict_is_small_and_checked():
    it = BatchIterator(examples(22), 5, seed=7, pad_id=0)
    for _ in range(4):
        next(it)
    assert it.state_dict() == {"epoch": 1, "position": 0, "seed": 7, "num_examples": 22, "batch_size": 5}
    other = BatchIterator(examples(22), 5, seed=8, pad_id=0)
    with pytest.raises(JaxalignError, match="seed=7, but this run has 8"):
        other.load_state_dict(it.state_dict())


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
def test_processes_split_each_global_batch_exactly_once(process_count):
    exs = examples(40, lo=3, hi=60)
    ref = BatchIterator(exs, 8, seed=5, pad_id=0, buckets="pow2")
    its = [BatchIterator(exs, 8, seed=5, pad_id=0, buckets="pow2", process_index=i, process_count=process_count)
           for i in range(process_count)]
    seen = []
    for _ in range(10):  # two epochs
        g = next(ref)
        parts = [next(it) for it in its]
        assert len({p["input_ids"].shape for p in parts}) == 1  # same shapes on every process
        assert all(p["input_ids"].shape[0] == 8 // process_count for p in parts)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in g}
        assert all(np.array_equal(merged[k], g[k]) for k in g)
        seen += ids_of(merged)
    assert sorted(seen[:40]) == list(range(40)) and sorted(seen[40:]) == list(range(40))


def test_bad_process_setups_are_clear_errors():
    with pytest.raises(JaxalignError, match="global batch_size 10 is not divisible by the 4"):
        BatchIterator(examples(40), 10, pad_id=0, process_count=4)
    with pytest.raises(JaxalignError, match="process_index 4"):
        BatchIterator(examples(40), 8, pad_id=0, process_index=4, process_count=4)
    with pytest.raises(JaxalignError, match="only 3 examples for a global batch of 8"):
        BatchIterator(examples(3), 8, pad_id=0)
    with pytest.raises(JaxalignError, match="pad_id is None"):
        BatchIterator(examples(8), 8, pad_id=None)


def test_no_drop_last_one_epoch_covers_everything():
    exs = examples(23)
    it = BatchIterator(exs, 5, seed=0, pad_id=0, drop_last=False, num_epochs=1)
    batches = list(it)
    assert [b["input_ids"].shape[0] for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(sum(map(ids_of, batches), [])) == list(range(23))
    # with 2 processes the last partial batch is trimmed to an even size
    parts = [list(BatchIterator(exs, 4, seed=0, pad_id=0, drop_last=False, num_epochs=1, process_index=i,
                                process_count=2)) for i in range(2)]
    assert [b["input_ids"].shape[0] for b in parts[0]] == [2] * 5 + [1]


def test_preference_batches_share_one_length():
    exs = [{"prompt_ids": np.array([5, 6], np.int32), "chosen_ids": np.array([5, 6, 7, EOS], np.int32),
            "chosen_mask": np.array([0, 0, 1, 1], np.int32), "rejected_ids": np.array([5, 6, 8, 9, 9, EOS], np.int32),
            "rejected_mask": np.array([0, 0, 1, 1, 1, 1], np.int32), "margin": 1.0},
           {"prompt_ids": np.array([5], np.int32), "chosen_ids": np.array([5, 7], np.int32),
            "chosen_mask": np.array([0, 1], np.int32), "rejected_ids": np.array([5, 8, EOS], np.int32),
            "rejected_mask": np.array([0, 1, 1], np.int32), "margin": 2.0}]
    b = collate(exs, pad_id=EOS)
    assert sorted(b) == ["chosen_attention_mask", "chosen_completion_mask", "chosen_input_ids", "margin",
                         "rejected_attention_mask", "rejected_completion_mask", "rejected_input_ids"]
    assert b["chosen_input_ids"].shape == b["rejected_input_ids"].shape == (2, 6)
    assert b["chosen_attention_mask"].sum(1).tolist() == [4, 2]
    assert b["rejected_completion_mask"].sum(1).tolist() == [4, 2]
    assert b["margin"].dtype == np.float32 and b["margin"].tolist() == [1.0, 2.0]


def test_ranked_batches_pad_k_and_mark_valid():
    def ranked(k):
        return {"prompt_ids": np.array([1], np.int32),
                "response_ids": [np.array([1] + [10 + j] * (j + 1), np.int32) for j in range(k)],
                "response_masks": [np.array([0] + [1] * (j + 1), np.int32) for j in range(k)]}

    it = BatchIterator([ranked(3), ranked(4), ranked(2), ranked(3)], 2, shuffle=False, pad_id=0)
    b = next(it)
    assert b["input_ids"].shape == (2, 4, 5) and b["rank_valid"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    b = next(it)  # K is the dataset's largest, so shapes repeat
    assert b["input_ids"].shape == (2, 4, 4) and b["rank_valid"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert b["attention_mask"][0].sum(1).tolist() == [2, 3, 0, 0]
    assert b["completion_mask"][0, 1].tolist() == [0, 1, 1, 0]


def test_prompts_are_left_padded():
    exs = [{"prompt_ids": np.array([7, 8, EOS], np.int32)}, {"prompt_ids": np.array([9], np.int32)}]
    b = collate(exs, pad_id=EOS)
    assert sorted(b) == ["prompt_ids", "prompt_mask"]
    assert b["prompt_ids"].tolist() == [[7, 8, EOS], [EOS, EOS, 9]]
    assert b["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    b = collate(exs, pad_id=0, buckets="pow2")
    assert b["prompt_ids"].shape == (2, 16) and b["prompt_ids"][1, -1] == 9 and b["prompt_mask"][1].sum() == 1


def unpaired_example(i: int, p: int, c: int, label: bool) -> dict:
    return {"prompt_ids": np.arange(10 * i, 10 * i + p, dtype=np.int32),
            "completion_ids": np.arange(100 + 10 * i, 100 + 10 * i + c, dtype=np.int32), "label": label, "row": i}


def test_unpaired_prompts_are_left_padded_and_completions_right_padded():
    exs = [unpaired_example(1, 3, 1, True), unpaired_example(2, 1, 2, False)]
    b = collate(exs, pad_id=EOS)
    assert sorted(b) == ["completion_attention_mask", "completion_input_ids", "label", "prompt_attention_mask",
                         "prompt_input_ids"]
    assert b["prompt_input_ids"].tolist() == [[10, 11, 12], [EOS, EOS, 20]]
    assert b["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["completion_input_ids"].tolist() == [[110, EOS], [120, 121]]
    assert b["completion_attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert b["label"].dtype == np.int32 and b["label"].tolist() == [1, 0]
    # Each row's real tokens are contiguous in [prompt; completion].
    seq = np.concatenate([b["prompt_input_ids"], b["completion_input_ids"]], axis=1)
    mask = np.concatenate([b["prompt_attention_mask"], b["completion_attention_mask"]], axis=1).astype(bool)
    assert [seq[i][mask[i]].tolist() for i in range(2)] == [[10, 11, 12, 110], [20, 120, 121]]
    b = collate(exs, pad_id=0, buckets="pow2")
    assert b["prompt_input_ids"].shape == (2, 16) and b["completion_input_ids"].shape == (2, 16)
    with pytest.raises(JaxalignError, match="length=\\(prompt width, completion width\\)"):
        collate(exs, pad_id=0, length=8)


@pytest.mark.parametrize("process_count", [1, 2])
def test_unpaired_widths_are_those_of_the_global_batch(process_count):
    exs = [unpaired_example(i, 1 + (7 * i) % 13, 1 + (5 * i) % 11, i % 2 == 0) for i in range(24)]
    its = [BatchIterator(exs, 8, seed=3, pad_id=0, process_index=k, process_count=process_count)
           for k in range(process_count)]
    for _ in range(3):
        parts = [next(it) for it in its]
        idx = its[0].global_indices(its[0].epoch, its[0].position - 1)
        want = (max(len(exs[i]["prompt_ids"]) for i in idx), max(len(exs[i]["completion_ids"]) for i in idx))
        for b in parts:
            assert (b["prompt_input_ids"].shape[1], b["completion_input_ids"].shape[1]) == want
        rows = np.concatenate([b["completion_input_ids"][:, 0] for b in parts])
        assert ((rows - 100) // 10).tolist() == idx.tolist()
    big = its[0].longest_batch()
    assert (big["prompt_input_ids"].shape[1], big["completion_input_ids"].shape[1]) == (13, 11)


def test_mixed_kinds_cannot_be_collated():
    with pytest.raises(JaxalignError, match="different formats"):
        collate([sft_example(0, 4), {"prompt_ids": np.array([1], np.int32)}], pad_id=0)


def test_train_eval_split():
    train, ev = train_eval_split(list(range(100)), 0.1, seed=0)
    assert len(ev) == 10 and sorted(train + ev) == list(range(100)) and train == sorted(train)
    assert train_eval_split(list(range(100)), 0.1, seed=0) == (train, ev)
    assert train_eval_split(list(range(5)), 0.0) == (list(range(5)), [])
