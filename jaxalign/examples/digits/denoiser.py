"""The noise predictor: a tiny class-conditional residual MLP in flax.nnx (8x8 images are 64
numbers; an MLP is enough and costs milliseconds on a CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def timestep_embedding(t, dim: int, max_period: float = 1000.0):
    """Sinusoidal embedding of integer steps ``t [N]`` -> ``[N, dim]`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Denoiser(nnx.Module):
    """``ε_θ(x_t, t, y)``: the input projection plus the step's and the label's embeddings, then
    ``depth`` residual SiLU blocks, each re-reading the conditioning; label ``num_classes`` is the
    null label of classifier-free guidance."""

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 256, depth: int = 3, rngs: nnx.Rngs):
        self.temb_dim = 64
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.temb = nnx.Linear(self.temb_dim, hidden, rngs=rngs)
        self.label = nnx.Embed(num_classes + 1, hidden, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
        self.cond = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
        self.norms = nnx.List([nnx.LayerNorm(hidden, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x, t, labels):
        c = jax.nn.silu(self.temb(timestep_embedding(t, self.temb_dim)) + self.label(labels))
        h = self.inp(x) + c
        for lin, cond, norm in zip(self.blocks, self.cond, self.norms):
            h = h + lin(jax.nn.silu(norm(h) + cond(c)))
        return self.out(jax.nn.silu(h))
