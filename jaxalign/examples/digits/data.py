"""scikit-learn's bundled 8x8 digits (no download), split into a generator half and a reward half."""

from __future__ import annotations

import numpy as np

from jaxalign.errors import JaxalignError

NUM_CLASSES = 10
PIXELS = 64
MAX_INTENSITY = 16.0  # load_digits' pixels are integers 0..16


def to_unit(pixels) -> np.ndarray:
    """Pixels 0..16 -> the generator's [-1, 1]."""
    return np.asarray(pixels, np.float32) / (MAX_INTENSITY / 2) - 1.0


def to_pixels(x) -> np.ndarray:
    """The generator's [-1, 1] -> pixels 0..16 (clipped), what the classifier reads."""
    return np.clip((np.asarray(x, np.float32) + 1.0) * (MAX_INTENSITY / 2), 0.0, MAX_INTENSITY)


def load_halves(seed: int = 0) -> dict:
    """The 1797 digits, shuffled with ``seed`` and split in two disjoint halves, stratified by
    class: ``generator`` (what the diffusion model trains on) and ``reward`` (what the classifier
    is fitted on; the generator never sees it). Each half is ``(pixels [N, 64] float32 0..16,
    labels [N] int32)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise JaxalignError("the digits example needs scikit-learn: pip install 'jaxalign[demo]'") from None
    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    gen, rew = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        gen.append(idx[: len(idx) // 2])
        rew.append(idx[len(idx) // 2:])
    gen, rew = np.sort(np.concatenate(gen)), np.sort(np.concatenate(rew))
    return {"generator": (x[gen], y[gen]), "reward": (x[rew], y[rew])}
