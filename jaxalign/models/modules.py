"""The decoder's building blocks that know nothing of a model family: the ``Linear`` layer
(HF layout ``[out, in]``, optional LoRA adapters, quantised or FSDP-gathered weights), the
RMSNorm (and Gemma's ``1 + w`` form), the token embedding and Gemma's soft-cap.
:mod:`jaxalign.models.llama` builds the decoder from them."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign.models import fsdp, lora_dropout
from jaxalign.models.matmul import mm
from jaxalign.models.quant import dequantize

_INIT_STD = 0.02  # transformers' initializer_range default for these families


def _normal(rngs: nnx.Rngs, shape, dtype):
    return _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype)


class Linear(nnx.Module):
    """``y = x @ weight.T + bias`` with ``weight`` in torch layout ``[out, in]``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs,
                 name: str | None = None):
        self.weight = nnx.Param(_normal(rngs, (d_out, d_in), param_dtype))
        # The layer's name (q_proj, ...): FSDP gathers its weights and scatters their gradients
        # back to the sharding the rules give that name (jaxalign.models.fsdp).
        self.param_name = name
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype)) if bias else None
        self.dtype = dtype
        self.transposed = False  # weight stored [in, out] (decoding, see CausalLM.unstacked_layers)
        # LoRA adapter (jaxalign.models.lora.add_lora): lora_A [r, in], lora_B [out, r] as
        # nnx.LoRAParam, output scaled by lora_scale; None without one.
        self.lora_a = self.lora_b = None
        self.lora_scale = 0.0
        # PEFT's lora_dropout on the adapter's input (jaxalign.models.lora_dropout); lora_index
        # makes each adapted layer's mask independent.
        self.lora_dropout = 0.0
        self.lora_index = 0
        # QLoRA (jaxalign.models.quant): with quant ("int8" / "nf4") the weight holds qwix's
        # quantised values and weight_scale their scales; None: a plain float weight.
        self.quant = None
        self.weight_scale = None

    def base_weight(self):
        """The weight as a float array (dequantised to float32 when quantised), layout as stored."""
        if self.quant is None:
            return self.weight[...]
        return dequantize(self.weight[...], self.weight_scale[...], self.quant)

    def _fsdp_key(self, param: str):
        """``(layer name, param)`` for :func:`fsdp.whole`; None (plain replication) unnamed or in
        decoding's transposed layout, which is never gathered."""
        return None if self.transposed or self.param_name is None else (self.param_name, param)

    def __call__(self, x):
        t, key = self.transposed, self._fsdp_key
        y = mm("...i,io->...o" if t else "...i,oi->...o", x, fsdp.whole(self.base_weight(), key("weight")), self.dtype)
        if self.lora_a is not None:
            # Decoding stores the adapters transposed too ([in, r], [r, out]), as the weight.
            xa = lora_dropout.apply(x, self.lora_dropout, self.lora_index) if self.lora_dropout else x
            h = mm("...i,ir->...r" if t else "...i,ri->...r", xa, fsdp.whole(self.lora_a[...], key("lora_a")), self.dtype)
            h = h * jnp.asarray(self.lora_scale, h.dtype)
            y = y + mm("...r,ro->...o" if t else "...r,or->...o", h, fsdp.whole(self.lora_b[...], key("lora_b")), self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, scaled after casting back (as transformers does).

    ``plus_one`` (Gemma): the scale is ``1 + weight`` (weights initialised to 0), applied in
    float32 before the cast back, as transformers' ``Gemma*RMSNorm`` does.
    """

    def __init__(self, dim: int, *, eps: float, param_dtype, plus_one: bool = False):
        self.weight = nnx.Param((jnp.zeros if plus_one else jnp.ones)((dim,), param_dtype))
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (x32 * (1.0 + self.weight[...].astype(jnp.float32))).astype(dtype)
        return self.weight[...].astype(dtype) * x32.astype(dtype)


def softcap(x, cap: float | None):
    """``cap * tanh(x / cap)`` (Gemma's soft-capping of attention scores and logits); ``x`` if no cap."""
    return x if cap is None else cap * jnp.tanh(x / cap)


class Embedding(nnx.Module):
    """Token embedding table ``weight [vocab, hidden]``."""

    def __init__(self, vocab: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(_normal(rngs, (vocab, dim), param_dtype))

    def __call__(self, ids):
        return jnp.take(fsdp.whole(self.weight[...], ("embed_tokens", "weight")), ids, axis=0)
