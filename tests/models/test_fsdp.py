"""FSDP weight gathering (jaxalign.models.fsdp): on an 8-device fsdp mesh a forward's compiled
per-device temporaries hold only its own rows' logits, where XLA's own propagation all-reduced
every row's ``[N, L, V]`` logits onto every device; the values equal one device's."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxalign import parallel as shd
from jaxalign.algorithms.experience import make_logps_fn
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model

N, L, V = 16, 64, 1024


@pytest.fixture(scope="module")
def sharded():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    cfg = ModelConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = init_model(cfg, seed=0)
    g, params = nnx.split(model)
    mesh = shd.make_mesh((1, 8, 1))
    placed = jax.device_put(params, shd.state_shardings(params, mesh))
    tokens = np.random.default_rng(0).integers(0, V, (N, L)).astype(np.int32)
    mask = np.ones((N, L), np.int32)
    batch = [jax.device_put(x, shd.batch_sharding(mesh, 2, rows=N)) for x in (tokens, mask)]
    return g, params, placed, mesh, tokens, mask, batch


def test_reference_forward_keeps_only_its_rows_logits(sharded):
    g, _, placed, mesh, _, _, batch = sharded
    temp = make_logps_fn(g, 1.0, mesh).lower(placed, *batch).compile().memory_analysis().temp_size_in_bytes
    full_logits = N * L * V * 4
    # Gathered weights: each device's temporaries are about its 2 rows' logits (+ the gathered
    # 256 KiB embedding), far under one copy of every row's logits (without: over two copies).
    assert temp < full_logits / 2, (temp, full_logits)


def test_gathered_forward_equals_one_device(sharded):
    g, params, placed, mesh, tokens, mask, batch = sharded
    one = np.asarray(make_logps_fn(g, 1.0)(params, tokens, mask))
    many = np.asarray(make_logps_fn(g, 1.0, mesh)(placed, *batch))
    np.testing.assert_allclose(many, one, atol=1e-5)


def test_weight_gradients_come_back_split_like_the_weights(sharded):
    """The gradient of a gathered weight is scattered back to the weight's own sharding (without
    it each layer's gradient was whole on every device, stacked over the layer scan), and equals
    one device's gradient."""
    from jaxalign.parallel.fsdp import traced_with

    g, params, placed, mesh, tokens, mask, batch = sharded

    def loss(p, t, m):
        return make_logps_fn(g, 1.0)(p, t, m).sum()

    grads = jax.jit(traced_with(jax.grad(loss), mesh))(placed, *batch)
    want = jax.jit(jax.grad(loss))(params, tokens, mask)
    for (path, got), (_, ref), (_, p) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(want),
                                             nnx.to_flat_state(placed)):
        if path[-1] == "weight" and p.value.ndim >= 2:
            assert got.value.sharding.is_equivalent_to(p.value.sharding, p.value.ndim), path
        np.testing.assert_allclose(np.asarray(got.value), np.asarray(ref.value), atol=2e-4, rtol=1e-4)


def test_micro_batches_are_split_over_the_devices_not_placed_whole(sharded):
    """Contiguous micro-batches of a row-split batch would each sit on one device (8 micro-batches
    on 8 devices); the layout spreads every micro-batch's rows over the batch axes instead, with
    the same rows in each micro-batch."""
    from jaxalign.models.fsdp import gathering, micro_rows_split
    from jaxalign.parallel.fsdp import layout
    from jaxalign.train.state import split_micro

    _, _, _, mesh, tokens, _, batch = sharded

    def split(b):
        with gathering(layout(mesh)):
            return micro_rows_split(split_micro(b, 2))

    out = jax.jit(split)(batch[0])
    np.testing.assert_array_equal(np.asarray(out), tokens.reshape(2, N // 2, L))
    want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
    assert out.sharding.is_equivalent_to(want, 3), out.sharding
