"""SFT algorithm: gradient accumulation equals one large batch (token and sequence mean), the loss
and gradient norm against PyTorch/transformers on the exported model, and a step on a
data=2 x fsdp=2 x tensor=2 mesh of 8 devices equals the 1-device step."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxalign.parallel import batch_shardings
from jaxalign.train.compile import shardings_of, state_shardings
from jaxalign.train.state import TrainState, make_train_step
from tests.algorithms.conftest import tiny_job
# One step at the full learning rate (no warmup: a zero first step would make the checks vacuous).
# optim.eps=1e-3: Adam's first update is lr * g / (|g| + eps); with the default eps=1e-8, a
# component whose gradient is ~1e-8 turns float rounding in g (~1e-9, a different summation
# order) into parameter differences of ~1e-5. A larger eps keeps AdamW's update Lipschitz in g
# (at most lr/eps * |dg| ~ 3e-7 here), so parameters compare at 1e-6 through the real optimizer.
BASE = ["train.steps=4", "train.batch_size=8", "data.eval_fraction=0.0", "optim.warmup_steps=0",
        "optim.schedule=constant", "optim.eps=1e-3"]


def _job(overrides):
    return tiny_job("sft", *BASE, *overrides)


def _step(cfg, job, batch, n_micro):
    """One train step exactly as the loop runs it (state and batch on the job's mesh)."""
    state = TrainState.create(job.params, job.tx, cfg.seed, job.extras)
    state = jax.device_put(state, state_shardings(state, job.mesh, job.tx))
    step = jax.jit(make_train_step(job.loss_fn, job.tx, n_micro, job.schedule),
                   out_shardings=(shardings_of(state), None))
    new, metrics = step(state, jax.device_put(batch, batch_shardings(batch, job.mesh)), job.frozen)
    return new, jax.device_get(metrics)


def _max_diff(a, b):
    a, b = jax.device_get(a), jax.device_get(b)  # host copies: the two may live on different meshes
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def _torch_reference(job, batch, aggregation, tmp_path):
    """Loss and gradient norm of the SFT objective, written out here in PyTorch on the model that
    jaxalign exports (an independent implementation of the forward pass and the aggregation)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    job.export(job.params, tmp_path / "init")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "init"), dtype=torch.float32)
    ids = torch.tensor(np.asarray(batch["input_ids"]), dtype=torch.long)
    attn = torch.tensor(np.asarray(batch["attention_mask"]), dtype=torch.long)
    mask = torch.tensor(np.asarray(batch["completion_mask"]), dtype=torch.float64)[:, 1:]
    logits = model(input_ids=ids, attention_mask=attn).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    nll = -(logp * mask)
    token_mean = nll.sum() / mask.sum()
    per_seq = mask.sum(1)
    has = per_seq > 0
    sequence_mean = (nll.sum(1)[has] / per_seq[has]).mean()
    # On ragged data the two objectives differ, so each aggregation is checked for itself.
    assert abs(token_mean.item() - sequence_mean.item()) > 1e-4
    loss = token_mean if aggregation == "token_mean" else sequence_mean
    loss.backward()
    gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return float(loss), float(gnorm)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_accumulation_equals_one_large_batch(aggregation, tmp_path):
    """Batch 8 as 4 micro-batches of 2 gives the step of one batch of 8 (params within 1e-6)."""
    cfg, job = _job(["train.micro_batch_size=2", f"sft.aggregation={aggregation}", "mesh.fsdp=1"])
    assert job.n_micro == 4
    batch = next(job.train_batches)
    # The micro-batches differ in completion tokens: averaging them unweighted would be wrong.
    tokens = np.asarray(batch["completion_mask"])[:, 1:].sum(1).reshape(4, 2).sum(1)
    assert len(set(tokens.tolist())) > 1
    one, m1 = _step(cfg, job, batch, 1)
    acc, m4 = _step(cfg, job, batch, job.n_micro)
    assert _max_diff(one.params, acc.params) < 1e-6
    assert _max_diff(one.opt_state, acc.opt_state) < 1e-6
    assert _max_diff(one.params, job.params) > 1e-3  # the step moved the parameters
    for k in ("loss", "nll", "grad_norm"):
        assert m4[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), k
    assert m1["nll"] == pytest.approx(m1["loss"], rel=1e-6)
    # ... and both are the objective as written in PyTorch.
    loss, gnorm = _torch_reference(job, batch, aggregation, tmp_path)
    assert m1["loss"] == pytest.approx(loss, rel=1e-5)
    assert m1["grad_norm"] == pytest.approx(gnorm, rel=1e-4)


def test_sharded_step_equals_single_device_step():
    """data=2 x fsdp=2 x tensor=2 on 8 devices: the same loss and parameters as on 1 device."""
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
    cfg1, job1 = _job(["mesh.fsdp=1"])
    cfg8, job8 = _job(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    assert job1.mesh.devices.size == 1 and dict(job8.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    b1, b8 = next(job1.train_batches), next(job8.train_batches)
    np.testing.assert_array_equal(b1["input_ids"], b8["input_ids"])
    s1, m1 = _step(cfg1, job1, b1, 1)
    s8, m8 = _step(cfg8, job8, b8, 1)
    # The 8-device parameters really are split: over tensor (vocab, heads, mlp) and fsdp (embed).
    emb = s8.params["embed_tokens"]["weight"].get_value()
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 2)
    q = s8.params["layers"]["self_attn"]["q_proj"]["weight"].get_value()
    assert q.sharding.spec == P(None, "tensor", "fsdp")
    assert len({s.device for s in q.addressable_shards}) == 8
    mu = jax.tree.leaves(s8.opt_state, is_leaf=lambda x: hasattr(x, "sharding"))
    assert any(getattr(x, "sharding", None) is not None and x.sharding.spec == P("tensor", "fsdp")
               for x in mu)  # Adam moments follow their parameters
    assert m8["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m8["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    assert _max_diff(s1.params, s8.params) < 1e-5
    assert _max_diff(s1.params, job1.params) > 1e-3


def test_sharded_completion_only_head_equals_full_head_step():
    """The train step with ``sft.chunk_size`` (head only on completion tokens, in chunks) on
    data=2 x fsdp=2 x tensor=2 equals the 1-device step with the full head."""
    cfg1, job1 = _job(["mesh.fsdp=1"])
    cfg8, job8 = _job(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "sft.chunk_size=8"])
    b1, b8 = next(job1.train_batches), next(job8.train_batches)
    s1, m1 = _step(cfg1, job1, b1, 1)
    s8, m8 = _step(cfg8, job8, b8, 1)
    assert m8["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m8["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    assert _max_diff(s1.params, s8.params) < 1e-5


@pytest.mark.parametrize("arch,tied,cap", [("LlamaForCausalLM", False, None), ("Gemma2ForCausalLM", True, 0.3)])
@pytest.mark.parametrize("packed", [False, True])
def test_completion_only_head_equals_full_head(arch, tied, cap, packed):
    """``completion_logps`` with ``chunk_size`` (the head run only on completion positions, in
    chunks) equals the full head on the completion positions: values and parameter gradients,
    with Gemma's soft-cap and tied embeddings, packed rows too."""
    import flax.nnx as nnx
    import jax.numpy as jnp

    from jaxalign.algorithms.sft import completion_logps
    from jaxalign.models import ModelConfig, init_model

    cfg = ModelConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, architecture=arch,
                      tie_word_embeddings=tied, final_logit_softcapping=cap,
                      hidden_act="gelu_pytorch_tanh" if cap else "silu")
    graphdef, params = nnx.split(init_model(cfg, seed=1))
    rng = np.random.default_rng(0)
    b, s = 3, 12
    batch = {"input_ids": jnp.asarray(rng.integers(0, 61, (b, s)), jnp.int32),
             "attention_mask": jnp.ones((b, s), jnp.int32).at[2, 9:].set(0),
             "completion_mask": jnp.asarray(rng.random((b, s)) < 0.5).at[1].set(False).at[2, 9:].set(False)}
    if packed:
        batch["segment_ids"] = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12, [1] * 3 + [2] * 6 + [0] * 3], jnp.int32)

    def total(params, chunk):
        logps, mask = completion_logps(nnx.merge(graphdef, params), batch, chunk_size=chunk)
        return jnp.sum(jnp.where(mask, logps, 0.0)), (logps, mask)

    (full_sum, (full, mask)), g_full = jax.value_and_grad(total, has_aux=True)(params, None)
    (part_sum, (part, mask2)), g_part = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)(params, 5)
    np.testing.assert_array_equal(mask, mask2)
    assert int(mask.sum()) > 5
    np.testing.assert_allclose(np.where(mask, part, 0.0), np.where(mask, full, 0.0), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(part)[~np.asarray(mask)], 0.0)
    assert _max_diff(g_part, g_full) < 1e-5
