"""Logical-axis rules overridable from the config (``mesh.logical_axis_rules``, as MaxText's
``logical_axis_rules``), the :func:`axis_rules` context, and the one batch-sharding rule."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxalign import algorithms, parallel
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.train.compile import compile_step, init_state

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def test_overrides_as_pairs_or_a_mapping():
    pairs = parallel.make_rules([["embed", None], ["mlp", ["fsdp", "tensor"]], ["vocab", "fsdp"]])
    mapping = parallel.make_rules({"embed": None, "mlp": ["fsdp", "tensor"], "vocab": "fsdp"})
    assert pairs == mapping
    assert pairs["embed"] is None and pairs["mlp"] == ("fsdp", "tensor") and pairs["vocab"] == "fsdp"
    # Untouched names keep the defaults; the defaults themselves are not modified.
    assert pairs["heads"] == parallel.DEFAULT_RULES["heads"] == "tensor"
    assert parallel.DEFAULT_RULES["embed"] == "fsdp"


@pytest.mark.parametrize("rules, words", [
    ([["embedding", "fsdp"]], "unknown logical axis 'embedding'"),
    ([["embed", "model"]], "unknown mesh axis 'model'"),
    ([["embed", ["fsdp", "fsdp"]]], "names a mesh axis twice"),
    ([["embed"]], "expected [logical_axis, mesh_axes] pairs"),
])
def test_bad_rules_name_the_key_and_the_axis(rules, words):
    with pytest.raises(JaxalignError) as e:
        parallel.make_rules(rules)
    assert "mesh.logical_axis_rules" in str(e.value) and words in str(e.value)


def test_a_bad_rule_in_a_config_is_refused_at_load():
    with pytest.raises(JaxalignError, match=r"mesh.logical_axis_rules.*unknown mesh axis 'fsdpp'"):
        load_config("configs/sft_tiny.yaml", ["mesh.logical_axis_rules=[[embed, fsdpp]]"])


@needs8
def test_the_context_applies_to_every_sharding_made_inside():
    mesh = parallel.make_mesh((2, 4, 1))
    shape = (64, 32)
    assert parallel.logical_to_spec(("vocab", "embed"), shape, mesh) == P(None, "fsdp")
    with parallel.axis_rules([["embed", None], ["vocab", "data"], ["batch", "fsdp"]]):
        assert parallel.logical_to_spec(("vocab", "embed"), shape, mesh) == P("data", None)
        assert parallel.batch_sharding(mesh).spec == P("fsdp", None)
        assert parallel.batch_shards(mesh) == 4
    assert parallel.logical_to_spec(("vocab", "embed"), shape, mesh) == P(None, "fsdp")
    assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


@needs8
def test_the_batch_rule_replicates_what_it_cannot_split():
    mesh = parallel.make_mesh((2, 4, 1))
    batch = {"ids": np.zeros((16, 5), np.int32), "odd": np.zeros((6,), np.float32)}
    sh = parallel.batch_shardings(batch, mesh)
    assert sh["ids"].spec == P(("data", "fsdp"), None) and sh["odd"].spec == P()
    placed = parallel.global_batch(batch, mesh)
    assert placed["ids"].sharding.spec == P(("data", "fsdp"), None) and placed["odd"].sharding.spec == P()


@needs8
def test_a_run_under_overridden_rules_places_params_by_them_and_computes_the_same():
    base = ["train.steps=1", "train.batch_size=8", "data.eval_fraction=0.0", "optim.warmup_steps=0",
            "mesh.data=2", "mesh.fsdp=4"]
    losses, specs = {}, {}
    for name, extra in (("default", []), ("override", ["mesh.logical_axis_rules=[[embed, null], [batch, fsdp]]"])):
        cfg = load_config("configs/sft_tiny.yaml", base + extra, algorithm="sft")
        cfg.quiet = True
        job = algorithms.build_job(cfg)
        specs[name] = job.params["embed_tokens"]["weight"].sharding.spec
        with parallel.axis_rules(cfg.mesh.logical_axis_rules):
            state = init_state(job, cfg.seed)
            batch = next(job.train_batches)
            _, metrics = compile_step(job, state)(state, parallel.global_batch(batch, job.mesh), job.frozen)
        losses[name] = float(metrics["loss"])
    assert specs["default"] == P(None, "fsdp") and specs["override"] == P(None, None)
    np.testing.assert_allclose(losses["override"], losses["default"], rtol=1e-6)
