"""QLoRA's quantised frozen base (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
Quantized LLMs", https://arxiv.org/abs/2305.14314), with Google's qwix doing the quantisation.

``model.lora.base_dtype: int8 | nf4`` stores every decoder ``Linear`` weight ``W [.., out, in]``
as qwix's quantised pair (``qvalue``, ``scale``), and ``Linear.__call__`` dequantises it to
float32 before its matmul (the base is frozen: no gradient reaches it, only through it to x):

- ``int8``: symmetric, one scale per output channel, qwix's absmax rule
  ``scale = max|W[o, :]| / 127.5``, ``q = clip(round(W / scale), -128, 127)``, ``W ~ q * scale``.
- ``nf4``: the 16 NormalFloat-4 code values of the QLoRA paper (Appendix E), one absmax scale
  per block of 64 consecutive inputs of an output row (a whole row when ``in < 64``),
  ``q = argmin_k |W / scale - NF4[k]|`` stored as ``uint4``, ``W ~ NF4[q] * scale``.

Scales stay float32 (QLoRA's double quantisation of the scales is not done). The qvalue keeps
the weight's name and layout, so shardings, the layer scan and slicing treat it as the weight;
``weight_scale`` has the weight's logical axes too (:mod:`jaxalign.parallel.rules`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

QTYPES = ("int8", "nf4")
NF4_BLOCK = 64  # QLoRA's block size


def _qtype(name: str):
    return jnp.int8 if name == "int8" else "nf4"


def block_size(qtype: str, d_in: int) -> int:
    """Inputs that share one scale: all of them (int8, per output channel), or nf4's blocks of 64."""
    return d_in if qtype == "int8" else min(NF4_BLOCK, d_in)


def check_shape(qtype: str, d_in: int) -> str | None:
    """Why a weight with ``d_in`` inputs cannot be quantised to ``qtype`` (None when it can)."""
    if d_in % block_size(qtype, d_in):
        return f"{qtype} needs the linear layers' input sizes to be multiples of {NF4_BLOCK}, got {d_in}"
    return None


@partial(jax.jit, static_argnums=1)
def quantize(w: jax.Array, qtype: str) -> tuple[jax.Array, jax.Array]:
    """``(qvalue, scale)`` of a weight ``[..., out, in]`` (qwix.quantize; scale ``[..., out, in/block]``).

    A stacked ``[layers, out, in]`` weight is quantised one layer at a time (qwix's nf4
    bucketing materialises 16 distances per element)."""
    import qwix

    def one(x):
        x = x.astype(jnp.float32)
        nd = x.ndim
        qa = qwix.quantize(x, _qtype(qtype), channelwise_axes=tuple(range(nd - 1)),
                           tiled_axes={nd - 1: block_size(qtype, x.shape[-1])})
        return qa.qvalue, qa.scale

    return jax.lax.map(one, w) if w.ndim == 3 else one(w)


def dequantize(qvalue: jax.Array, scale: jax.Array, qtype: str) -> jax.Array:
    """The float32 weight ``qvalue * scale`` (nf4: ``NF4[qvalue] * scale``), by qwix.dequantize.

    Works in either layout (``[out, in]`` with scale ``[out, k]``, or transposed): qwix
    broadcasts each scale over its block."""
    from qwix._src.core.qarray import QArray, dequantize as _deq

    return _deq(QArray(qvalue, scale.astype(jnp.float32), None, _qtype(qtype)))
