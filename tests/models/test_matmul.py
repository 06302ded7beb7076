"""``mm``: low-precision matmuls with float32 accumulation, forward and backward."""

import re

import numpy as np
import pytest

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign import init_model
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import mm

SPECS = [  # the contractions the model uses
    ("...i,oi->...o", (2, 3, 8), (5, 8)),
    ("bskgh,btkh->bkgst", (2, 4, 3, 2, 5), (2, 6, 3, 5)),
    ("bkgst,btkh->bskgh", (2, 3, 2, 4, 6), (2, 6, 3, 5)),
    ("bsd,vd->bsv", (2, 4, 8), (7, 8)),
]


def _bf16(x):
    """Round to bfloat16 and back to float64 (numpy reference inputs)."""
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("spec,sa,sb", SPECS)
def test_bfloat16_forward_and_gradients_match_float64_reference(spec, sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    ab, bb = _bf16(a), _bf16(b)
    ref = np.einsum(spec, ab, bb)  # float64 sum of the rounded operands
    w = rng.normal(size=ref.shape)
    out = mm(spec, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    # float32 accumulation: only the final rounding to bfloat16 (relative 2^-8) remains.
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, rtol=2 ** -8, atol=1e-6)

    def loss(a, b):
        return (mm(spec, a, b, jnp.bfloat16).astype(jnp.float32) * jnp.asarray(w, jnp.float32)).sum()

    da, db = jax.grad(loss, (0, 1))(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    ins, out_s = spec.replace("...", "xy").split("->")  # numpy cannot sum over '...' dims
    sa_s, sb_s = ins.split(",")
    gw = _bf16(w)  # the cotangent reaches the dots in bfloat16
    ref_da = np.einsum(f"{out_s},{sb_s}->{sa_s}", gw, bb)
    ref_db = np.einsum(f"{out_s},{sa_s}->{sb_s}", gw, ab)
    scale_a, scale_b = np.abs(ref_da).max(), np.abs(ref_db).max()
    np.testing.assert_allclose(np.asarray(da), ref_da, atol=2 ** -7 * scale_a)
    np.testing.assert_allclose(np.asarray(db), ref_db, atol=2 ** -7 * scale_b)


def test_float32_is_a_plain_einsum():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(mm("...i,oi->...o", a, b, jnp.float32)),
                                  np.asarray(jnp.einsum("...i,oi->...o", a, b)))


def _dot_operand_types(hlo: str):
    return re.findall(r"dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\)", hlo)


def test_bfloat16_train_step_has_no_float32_matmul():
    """Every dot of a bfloat16-compute gradient (forward and backward, float32 master weights)
    takes bfloat16 operands: a float32 dot there runs 2-4x slower on CPU and multi-pass on TPU."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      dtype="bfloat16", param_dtype="float32")
    g, s = nnx.split(init_model(cfg))
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)

    def loss(s):
        logits = nnx.merge(g, s)(ids).astype(jnp.float32)
        return jax.nn.logsumexp(logits, -1).mean()

    hlo = jax.jit(jax.grad(loss)).lower(s).as_text()
    dots = _dot_operand_types(hlo)
    assert len(dots) >= 6  # forward and backward dots are all there
    assert all("bf16" in x and "bf16" in y for x, y in dots), [d for d in dots if "f32" in d[0] + d[1]]
    # and the gradient is close to the float32 model's
    g32, s32 = nnx.split(init_model(cfg.replace(dtype="float32")))
    grad16 = jax.grad(loss)(s)
    grad32 = jax.grad(lambda s: jax.nn.logsumexp(nnx.merge(g32, s)(ids), -1).mean())(s32)
    for x, y in zip(jax.tree.leaves(grad16), jax.tree.leaves(grad32)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.abs(x - y).max() <= 0.05 * np.abs(y).max() + 1e-6
