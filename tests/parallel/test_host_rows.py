"""The row bookkeeping of :mod:`jaxalign.parallel.host_rows` as process ``i`` of ``n`` sees it
(process count and index patched; the collectives themselves are exercised by the two-process
runs in tests/algorithms/test_online_multiprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.parallel import host_rows


def as_process(monkeypatch, i: int, n: int):
    monkeypatch.setattr(host_rows.jax, "process_count", lambda: n)
    monkeypatch.setattr(host_rows.jax, "process_index", lambda: i)


def test_one_process_keeps_everything():
    batch = {"ids": np.arange(6).reshape(3, 2), "w": np.float32(1.0)}
    assert host_rows.own_rows(batch) is batch and host_rows.gather_rows(batch) is batch
    assert host_rows.own_slice(3) == slice(0, 3)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_each_process_takes_its_contiguous_block_of_every_array(monkeypatch, i):
    as_process(monkeypatch, i, 3)
    batch = {"ids": np.arange(12).reshape(6, 2), "ptx": {"ids": np.arange(3)}, "kl": np.float32(0.5)}
    got = host_rows.own_rows(batch)
    np.testing.assert_array_equal(got["ids"], np.arange(12).reshape(6, 2)[2 * i:2 * i + 2])
    np.testing.assert_array_equal(got["ptx"]["ids"], [i])  # each array split by its own rows
    assert got["kl"] == np.float32(0.5)  # scalars are not rows
    assert host_rows.own_slice(6) == slice(2 * i, 2 * i + 2)
    # The blocks of all processes, in process order, are the batch (what global_batch assumes).
    blocks = []
    for j in range(3):
        as_process(monkeypatch, j, 3)
        blocks.append(host_rows.own_rows(batch)["ids"])
    np.testing.assert_array_equal(np.concatenate(blocks), batch["ids"])


def test_rows_that_do_not_split_are_one_line_naming_the_array(monkeypatch):
    as_process(monkeypatch, 0, 2)
    with pytest.raises(JaxalignError, match=r"train batch \['chosen_ids'\]: 3 rows do not split over 2 processes"):
        host_rows.own_rows({"chosen_ids": np.zeros((3, 4))})
    assert host_rows.own_slice(3) is None  # a reward then scores every row on every process
