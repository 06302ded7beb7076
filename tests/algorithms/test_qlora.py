"""QLoRA and LoRA dropout in runs: a QLoRA SFT step changes only the adapters (the quantised base
stays bit-identical); `jaxalign plan` counts the quantised base's bytes per device as by hand from
the shapes and the sharding rules (below bfloat16's); with model.lora.dropout the training loss
depends on the step's key (same key: same loss), evaluation does not drop, and a resumed run is
bit-exact."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign import algorithms
from jaxalign.cli import main
from jaxalign.parallel.batch import global_batch
from jaxalign.train.compile import compile_step, init_state
from jaxalign.train.loop import run
from tests.algorithms.conftest import SMALLEST_MODEL, tiny_cfg

FAST = ["quiet=true", "train.plots=false", "train.save_final=false"]
LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
CONSTANT = ["optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0"]


def _np(tree):
    return [np.array(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_a_qlora_sft_step_changes_only_the_adapters(qtype):
    cfg = tiny_cfg("sft", *FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=4",
                   f"model.lora.base_dtype={qtype}")
    job = algorithms.build_job(cfg)
    base, _ = job.frozen
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(base)}
    assert flat["layers/mlp/up_proj/weight"][...].dtype == np.dtype("int8" if qtype == "int8" else "uint4")
    assert "layers/mlp/up_proj/weight_scale" in flat
    state = init_state(job, cfg.seed)
    base_before, adapters_before = _np(base), _np(state.params)
    state, metrics = compile_step(job, state)(state, global_batch(next(job.train_batches), job.mesh), job.frozen)
    assert np.isfinite(float(metrics["loss"]))
    for before, after in zip(base_before, _np(base)):
        np.testing.assert_array_equal(after, before)
    changed = [not np.array_equal(a, b) for a, b in zip(adapters_before, _np(state.params))]
    assert sum(changed) == 7  # every B (A has no gradient while B = 0)


def _base_bytes(qtype, vocab=260, h=64, inter=128, layers=2, kv=32, fsdp=8) -> int:
    """configs/sft_tiny.yaml's frozen base per device (8 devices, all mesh.fsdp; tensor 1): every
    matrix has an `embed` dim that fsdp splits; embeddings (tied) stay float32, norms replicate.
    Scales (float32) [layers, out, in / block] shard like their weight: only an `embed` output
    axis (o_proj, down_proj) splits; nf4 blocks are 64 inputs (down_proj's 128 inputs: 2)."""
    per_layer = h * h + 2 * kv * h + h * h + 3 * inter * h
    norms = (2 * layers + 1) * h * 4
    embed = vocab * h * 4 // fsdp
    if qtype == "bfloat16":  # the whole base cast, embeddings and norms too
        return (vocab * h + layers * per_layer) * 2 // fsdp + norms // 2
    bits = 8 if qtype == "int8" else 4
    codes = layers * per_layer * bits // 8 // fsdp
    down_blocks = 1 if qtype == "int8" else inter // 64
    replicated_scales = layers * (h + 2 * kv + 2 * inter) * 4  # q, k, v, gate, up
    split_scales = layers * (h + h * down_blocks) * 4 // fsdp  # o, down
    return embed + norms + codes + replicated_scales + split_scales


@pytest.mark.parametrize("qtype", ["int8", "nf4"])
def test_plan_counts_the_quantised_base(qtype, tmp_path):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["plan", "--config", "configs/sft_tiny.yaml", "--json", f"run_dir={tmp_path / 'never'}",
                   "data.buckets=[128]", *LORA, f"model.lora.base_dtype={qtype}"])
    assert rc == 0
    est = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert est["frozen"] == _base_bytes(qtype)
    assert _base_bytes(qtype) < _base_bytes("bfloat16")


DROP = [*FAST, *SMALLEST_MODEL, *LORA, *CONSTANT, "train.batch_size=4"]


def _trained_b(params):
    """``params`` (adapters) with every B nonzero: dropout on the adapters' input shows in the loss."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_dropout_depends_on_the_key_and_evaluation_does_not_drop():
    job = algorithms.build_job(tiny_cfg("sft", *DROP, "model.lora.dropout=0.3"))
    plain = algorithms.build_job(tiny_cfg("sft", *DROP))
    params = _trained_b(job.params)
    batch = {k: np.asarray(v) for k, v in next(job.train_batches).items()}

    def loss(fn, key):
        return float(jax.jit(fn)(params, batch, job.frozen, jax.random.key(key), {})[0])

    undropped = loss(plain.loss_fn, 1)
    assert loss(job.loss_fn, 1) == loss(job.loss_fn, 1)
    assert len({loss(job.loss_fn, 1), loss(job.loss_fn, 2), undropped}) == 3
    assert loss(job.eval_loss_fn, 1) == undropped == loss(job.eval_loss_fn, 2)


def test_a_resumed_run_with_dropout_is_bit_exact_and_dropout_changes_training(tmp_path):
    ov = [*DROP, "model.lora.dropout=0.3", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=3"]
    cfg = tiny_cfg("sft", *ov)
    a = run(cfg, algorithms.build_job(cfg), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    cfg_b = tiny_cfg("sft", *ov)
    b = run(cfg_b, algorithms.build_job(cfg_b), tmp_path / "b")
    for x, y in zip(_np(a["state"]), _np(b["state"])):
        np.testing.assert_array_equal(x, y)
    cfg_c = tiny_cfg("sft", *[o for o in ov if "dropout" not in o])
    c = run(cfg_c, algorithms.build_job(cfg_c), tmp_path / "c")
    assert any(not np.array_equal(x, y) for x, y in zip(_np(a["state"].params), _np(c["state"].params)))
