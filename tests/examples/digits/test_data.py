"""The two halves of the digits are disjoint, cover the data, and are stratified by class."""

import numpy as np

from jaxalign.examples.digits import data


def test_halves_are_disjoint_stratified_and_complete():
    from sklearn.datasets import load_digits

    d = load_digits()
    h = data.load_halves(0)
    (xg, yg), (xr, yr) = h["generator"], h["reward"]
    assert len(yg) + len(yr) == len(d.target)
    # Rows are identified by their pixels plus label; the multiset of the two halves is the data.
    key = lambda x, y: sorted(map(bytes, np.concatenate([x, y[:, None]], 1).astype(np.int8)))
    assert key(np.concatenate([xg, xr]), np.concatenate([yg, yr])) == key(d.data, d.target)
    for c in range(10):
        n = int(np.sum(d.target == c))
        assert np.sum(yg == c) == n // 2 and np.sum(yr == c) == n - n // 2
    assert np.array_equal(h["generator"][1], data.load_halves(0)["generator"][1])


def test_unit_scaling_round_trips():
    px = np.arange(17, dtype=np.float32)
    np.testing.assert_allclose(data.to_pixels(data.to_unit(px)), px, atol=1e-5)
    assert data.to_unit(px).min() == -1 and data.to_unit(px).max() == 1
