"""The prompt-alignment reward and the realism check, both fitted on the half of the digits the
generator never sees (so neither depends on the generator or its data).

- :class:`DigitReward`: ``P(prompted digit | image) × gate(image)``: an 11-way flax.nnx MLP
  classifier (the ten digits and a "not a digit" class trained on synthetic junk: noise, blotches,
  saturated and scrambled digits) times a density gate (a Gaussian over the digits' PCA
  coordinates). A linear classifier on pixels alone was hacked: RAFT's best-of-K drifted into
  saturated blotches it scored ~1 (README, "Digits").
- :class:`Realism`: the report's check, PCA *reconstruction error* (the residual off the digits'
  principal subspace, which the gate does not look at) within the real digits' 99% quantile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxalign.examples.digits.data import MAX_INTENSITY, NUM_CLASSES, PIXELS, to_pixels

JUNK = NUM_CLASSES  # the "not a digit" class


def junk_images(pixels, rng: np.random.Generator) -> np.ndarray:
    """As many synthetic non-digits (pixels 0..16, ``[N, 64]``) as ``pixels`` has rows, in six
    equal kinds: uniform noise; binary blotches (random density); smooth blobs (blurred noise,
    thresholded); saturated digits (×2-4 plus an offset, clipped: what the hacked generator drew);
    digits with their pixels shuffled; digits plus strong Gaussian noise."""
    x = np.asarray(pixels, np.float32)
    n = x.shape[0]
    kind = np.arange(n) % 6
    out = np.empty_like(x)
    src = x[rng.permutation(n)]
    u = rng.uniform(size=(n, PIXELS)).astype(np.float32)
    out[kind == 0] = (u * MAX_INTENSITY)[kind == 0]
    dens = rng.uniform(0.15, 0.85, size=(n, 1))
    out[kind == 1] = ((u < dens) * MAX_INTENSITY)[kind == 1]
    g = rng.normal(size=(n, 10, 10))
    blur = sum(g[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)).reshape(n, PIXELS)
    rank = (rng.uniform(0.2, 0.8, size=n) * PIXELS).astype(int)
    thr = np.sort(blur, axis=1)[np.arange(n), rank][:, None]
    out[kind == 2] = ((blur > thr) * MAX_INTENSITY)[kind == 2]
    gain = rng.uniform(2.0, 4.0, size=(n, 1))
    off = rng.uniform(0.0, 8.0, size=(n, 1))
    out[kind == 3] = np.clip(src * gain + off, 0, MAX_INTENSITY)[kind == 3]
    out[kind == 4] = rng.permuted(src, axis=1)[kind == 4]
    out[kind == 5] = np.clip(src + rng.normal(0, 6.0, size=src.shape), 0, MAX_INTENSITY)[kind == 5]
    return out


class Classifier(nnx.Module):
    """An MLP on the 64 pixels (scaled to [0, 1]): ``depth`` SiLU layers, 11 logits."""

    def __init__(self, hidden: int = 128, depth: int = 2, *, rngs: nnx.Rngs):
        dims = [PIXELS] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims, dims[1:])])
        self.out = nnx.Linear(dims[-1], NUM_CLASSES + 1, rngs=rngs)

    def __call__(self, x01):
        h = x01
        for lin in self.layers:
            h = jax.nn.silu(lin(h))
        return self.out(h)


def fit_classifier(pixels, labels, *, hidden: int = 128, depth: int = 2, steps: int = 400, lr: float = 3e-3,
                   weight_decay: float = 1e-4, seed: int = 0) -> tuple:
    """Train :class:`Classifier` on the real digits plus as many :func:`junk_images` (label
    :data:`JUNK`), full batch, AdamW, cross-entropy, one jitted ``lax.scan``. Returns
    ``(graphdef, params)``."""
    rng = np.random.default_rng(seed)
    x = np.asarray(pixels, np.float32)
    xs = np.concatenate([x, junk_images(x, rng)]) / MAX_INTENSITY
    ys = np.concatenate([np.asarray(labels, np.int32), np.full(len(x), JUNK, np.int32)])
    graphdef, params = nnx.split(Classifier(hidden, depth, rngs=nnx.Rngs(seed)))
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss(p):
        logits = nnx.merge(graphdef, p)(xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

    def step(carry, _):
        p, o = carry
        g = jax.grad(loss)(p)
        upd, o = tx.update(g, o, p)
        return (optax.apply_updates(p, upd), o), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(params)
    return graphdef, params


class DensityGate:
    """A Gaussian over the top ``components`` PCA coordinates of real digits (pixels / 16):
    ``d²(x) = Σ_k z_k² / λ_k`` (Mahalanobis); ``gate = 1`` up to the real digits' ``quantile`` of
    d² (τ), ``exp(−(d² − τ)/τ)`` beyond: far-off images (blotches, over-saturated strokes) score
    ~0 whatever the classifier says."""

    def __init__(self, pixels, *, components: int = 16, quantile: float = 0.99):
        from sklearn.decomposition import PCA

        x = np.asarray(pixels, np.float64) / MAX_INTENSITY
        self.pca = PCA(n_components=components, random_state=0).fit(x)
        self.tau = float(np.quantile(self.d2(x * MAX_INTENSITY), quantile))

    def d2(self, pixels) -> np.ndarray:
        """``[N]`` squared Mahalanobis distance of pixels 0..16 in the PCA coordinates."""
        z = self.pca.transform(np.asarray(pixels, np.float64) / MAX_INTENSITY)
        return np.sum(z * z / self.pca.explained_variance_, axis=1)

    def __call__(self, pixels) -> np.ndarray:
        return np.exp(-np.maximum(self.d2(pixels) - self.tau, 0.0) / self.tau)


class DigitReward:
    """``reward(x, labels) = P(label | x) · gate(x)`` for generator outputs ``x`` in [-1, 1]: the
    probability of the prompted digit under the 11-way classifier (:func:`fit_classifier`) times
    the :class:`DensityGate`, both fitted on ``(pixels 0..16, labels)`` of the reward half."""

    def __init__(self, pixels, labels, *, hidden: int = 128, steps: int = 400, seed: int = 0):
        labels = np.asarray(labels)
        missing = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"the reward classifier's data has no example of digit(s) {missing}")
        self.graphdef, self.params = fit_classifier(pixels, labels, hidden=hidden, steps=steps, seed=seed)
        self.gate = DensityGate(pixels)
        self._logits = jax.jit(lambda p, x: nnx.merge(self.graphdef, p)(x))

    def probs_pixels(self, pixels) -> np.ndarray:
        """``[N, 11]`` class probabilities (ten digits, then "not a digit") of pixels 0..16."""
        x = jnp.asarray(np.asarray(pixels, np.float32) / MAX_INTENSITY)
        return np.asarray(jax.nn.softmax(self._logits(self.params, x), axis=-1), np.float64)

    def probs(self, x) -> np.ndarray:
        """``[N, 11]`` class probabilities of generator outputs ``x [N, 64]`` in [-1, 1]."""
        return self.probs_pixels(to_pixels(x))

    def __call__(self, x, labels) -> np.ndarray:
        """``[N]`` float32: ``P(label_i | x_i) · gate(x_i)``."""
        px = to_pixels(x)
        p = self.probs_pixels(px)
        return (p[np.arange(p.shape[0]), np.asarray(labels)] * self.gate(px)).astype(np.float32)

    def accuracy(self, pixels, labels) -> float:
        """Accuracy over the ten digits on real digits (pixels 0..16), e.g. the generator half."""
        p = self.probs_pixels(pixels)[:, :NUM_CLASSES]
        return float(np.mean(p.argmax(axis=1) == np.asarray(labels)))


class Realism:
    """The report's realism check, and optionally RAFT's filter: a sample is unrealistic when its
    reconstruction error under a PCA of real digits (fitted on the reward half) exceeds the
    ``quantile`` of the real digits' own errors. The reward's gate reads the PCA *coordinates*;
    this reads the *residual*, so the reward is not optimised against it directly."""

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
