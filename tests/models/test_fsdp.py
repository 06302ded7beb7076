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
