"""Matrix products of the models: ``mm`` (low-precision operands, float32 accumulation, in the
forward and the backward pass)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def mm(spec: str, a, b, dtype, out_dtype=None):
    """``einsum(spec, a, b)`` with operands in ``dtype`` and float32 accumulation, cast to
    ``out_dtype`` (default ``dtype``).

    Float32 accumulation is what makes low-precision matmuls fast on CPU: XLA:CPU runs a
    bfloat16 x bfloat16 -> float32 dot on the AVX-512 BF16 units (2-3.5x its float32 rate at
    SmolLM2's decode shapes), but a bfloat16 -> bfloat16 dot 2-5x *slower* than float32 (see
    benchmarks/README.md, "bfloat16 matmuls"). It is also how GPUs and TPUs accumulate bfloat16.
    The backward pass keeps the same form (see :func:`_mm_low`). For float32 it is a plain einsum.
    """
    out_dtype = jnp.dtype(out_dtype or dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype)).astype(out_dtype)
    return _mm_low(spec, out_dtype, a.astype(dtype), b.astype(dtype))


def _transpose_specs(spec: str):
    """For ``"A,B->C"`` the specs of the two gradients, ``"C,B->A"`` and ``"C,A->B"``."""
    ins, out = spec.split("->")
    a, b = ins.split(",")
    return f"{out},{b}->{a}", f"{out},{a}->{b}"


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mm_low(spec, out_dtype, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _mm_low_fwd(spec, out_dtype, a, b):
    return _mm_low(spec, out_dtype, a, b), (a, b)


def _mm_low_bwd(spec, out_dtype, res, g):
    # JAX's own transpose of a dot with preferred_element_type=float32 feeds the float32 cotangent
    # into float32 dots (the bfloat16 operand is upcast): the backward would run at float32 speed
    # on CPU and, on a TPU, as a multi-pass float32 matmul. Here both gradient dots are again
    # low-precision x low-precision -> float32.
    a, b = res
    spec_a, spec_b = _transpose_specs(spec)
    g = g.astype(a.dtype)
    da = jnp.einsum(spec_a, g, b, preferred_element_type=jnp.float32).astype(a.dtype)
    db = jnp.einsum(spec_b, g, a, preferred_element_type=jnp.float32).astype(b.dtype)
    return da, db


_mm_low.defvjp(_mm_low_fwd, _mm_low_bwd)
