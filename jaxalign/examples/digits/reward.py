"""The prompt-alignment reward: P(prompted digit | image) under a classifier fitted on the half of
the digits the generator never sees (so the reward is independent of the generator's data)."""

from __future__ import annotations

import numpy as np

from jaxalign.examples.digits.data import NUM_CLASSES, to_pixels


class DigitReward:
    """A multinomial logistic regression (scikit-learn) on the 64 pixels (0..16) of the reward
    half; ``reward(x, labels)`` is the probability of ``labels`` for generator outputs ``x`` in
    [-1, 1]."""

    def __init__(self, pixels, labels, *, C: float = 0.1, max_iter: int = 2000):
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        missing = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"the reward classifier's data has no example of digit(s) {missing}")
        self.clf = LogisticRegression(C=C, max_iter=max_iter).fit(np.asarray(pixels, np.float64), labels)

    def probs(self, x) -> np.ndarray:
        """``[N, 10]`` class probabilities of generator outputs ``x [N, 64]`` in [-1, 1]."""
        return self.clf.predict_proba(to_pixels(x).astype(np.float64))

    def __call__(self, x, labels) -> np.ndarray:
        """``[N]`` float32: P(label_i | x_i)."""
        p = self.probs(x)
        return p[np.arange(p.shape[0]), np.asarray(labels)].astype(np.float32)

    def accuracy(self, pixels, labels) -> float:
        """Accuracy on real digits (pixels 0..16), e.g. the generator half."""
        return float(np.mean(self.clf.predict(np.asarray(pixels, np.float64)) == np.asarray(labels)))


class Realism:
    """A reward-hacking filter (RAFT's filters, for images): a sample is unrealistic when its
    reconstruction error under a PCA of real digits (fitted on the reward half, like the
    classifier) exceeds the ``quantile`` of the real digits' own errors. Best-of-K selection by
    a linear classifier otherwise drifts, over iterations, into saturated blotches the classifier
    still scores ~1; as :func:`raft_iteration`'s ``filter_fn`` those get reward −inf and are never
    kept, and :meth:`pass_rate` reports how many held-out samples still look like digits."""

    def __init__(self, pixels, *, components: int = 16, quantile: float = 0.99):
        from sklearn.decomposition import PCA

        x = np.asarray(pixels, np.float64) / 16.0
        self.pca = PCA(n_components=components, random_state=0).fit(x)
        self.threshold = float(np.quantile(self._err(x), quantile))

    def _err(self, x01) -> np.ndarray:
        return np.mean((self.pca.inverse_transform(self.pca.transform(x01)) - x01) ** 2, axis=1)

    def error(self, x) -> np.ndarray:
        """``[N]`` reconstruction error of generator outputs ``x`` in [-1, 1]."""
        return self._err(to_pixels(x).astype(np.float64) / 16.0)

    def realistic(self, x) -> np.ndarray:
        """``[N]`` bool: within the real digits' error quantile."""
        return self.error(x) <= self.threshold

    def pass_rate(self, x) -> float:
        return float(np.mean(self.realistic(x)))

    def filter_fn(self, samples: dict, rewards):
        """``raft_iteration``'s hook: rewards of unrealistic samples -> −inf."""
        return np.where(self.realistic(np.asarray(samples["x"])), np.asarray(rewards), -np.inf).astype(np.float32)
