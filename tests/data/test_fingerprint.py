"""The data fingerprint that a resume checks: equal for equal content, different for any change."""

import numpy as np

from jaxalign.data.batching import BatchIterator
from jaxalign.data.fingerprint import examples_fingerprint


def _examples():
    return [{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]},
            {"input_ids": [4, 5], "loss_mask": [0, 1]}]


def test_equal_content_gives_equal_digest_and_copies_agree():
    a, b = _examples(), _examples()
    assert examples_fingerprint(a) == examples_fingerprint(b)
    assert len(examples_fingerprint(a)) == 16


def test_one_changed_token_swapped_fields_or_order_change_the_digest():
    base = examples_fingerprint(_examples())
    changed = _examples()
    changed[1]["input_ids"][1] = 6
    swapped = _examples()
    swapped[0]["input_ids"], swapped[0]["loss_mask"] = swapped[0]["loss_mask"], swapped[0]["input_ids"]
    reordered = _examples()[::-1]
    moved = [{"input_ids": [1, 2], "loss_mask": [0, 1, 1]}, {"input_ids": [3, 4, 5], "loss_mask": [0, 1]}]
    digests = {examples_fingerprint(x) for x in (changed, swapped, reordered, moved)}
    assert base not in digests and len(digests) == 4


def test_arrays_hash_by_dtype_and_shape_too():
    a = [{"x": np.arange(6, dtype=np.int32)}]
    b = [{"x": np.arange(6, dtype=np.int64)}]
    c = [{"x": np.arange(6, dtype=np.int32).reshape(2, 3)}]
    assert len({examples_fingerprint(x) for x in (a, b, c)}) == 3


def test_batch_iterator_fingerprint_is_the_examples_digest():
    ex = [{"input_ids": [1, 2, 3, 4], "loss_mask": [0, 1, 1, 1]} for _ in range(4)]
    it = BatchIterator(ex, batch_size=2, pad_id=0, seed=0)
    assert it.fingerprint() == examples_fingerprint(ex)
