"""Tests for jaxalign/algorithms/logps.py: the completion-only chunked head (``chunk_size``) in
the online algorithms gives the full head's losses, metrics and gradients: GRPO's and PPO's
losses against themselves without ``chunk_size``, the reference forward on the completion
tokens, and whole runs of every online algorithm through the CLI."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.algorithms.conftest import SMALLEST_MODEL, metric_rows, run_cli

P, T = 5, 7  # prompt columns, completion slots


def _model(arch="LlamaForCausalLM", cap=None, seed=1):
    from jaxalign.models import ModelConfig, init_model

    cfg = ModelConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, architecture=arch,
                      tie_word_embeddings=cap is not None, final_logit_softcapping=cap,
                      hidden_act="gelu_pytorch_tanh" if cap else "silu")
    return init_model(cfg, seed=seed)


def _rollouts(n=4, seed=0):
    """Rows as the experience phase makes them: prompt left-padded, completion right-padded
    (lengths 7, 3, 1 and 5 slots), with sampling and reference log-probs and advantages."""
    rng = np.random.default_rng(seed)
    lengths = [7, 3, 1, 5][:n]
    attn = np.ones((n, P + T), np.int32)
    attn[1, :2] = 0
    comp = np.zeros((n, P + T), bool)
    for i, k in enumerate(lengths):
        comp[i, P:P + k] = True
        attn[i, P + k:] = 0
    ids = rng.integers(0, 61, (n, P + T)).astype(np.int32)
    logp = lambda: np.where(comp, -rng.random((n, P + T)) * 3.0, 0.0).astype(np.float32)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(attn),
            "completion_mask": jnp.asarray(comp), "old_logps": jnp.asarray(logp()),
            "ref_logps": jnp.asarray(logp()),
            "advantages": jnp.asarray(rng.standard_normal(n), jnp.float32)}


def _loss_and_grads(loss_fn, params, batch):
    def f(p):
        loss, (weight, metrics, _) = loss_fn(p, batch, None, jax.random.key(0), {})
        return loss, metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return float(loss), {k: float(v) for k, v in metrics.items()}, grads


def _assert_same(a, b):
    (la, ma, ga), (lb, mb, gb) = a, b
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(gb))
    assert scale > 1e-3 and diff < 1e-5 * max(scale, 1.0), (diff, scale)


@pytest.mark.parametrize("advantage,beta,arch,cap", [
    ("grpo", 0.04, "LlamaForCausalLM", None),
    ("rloo", 0.0, "Gemma2ForCausalLM", 0.3),
])
def test_grpo_loss_with_chunk_size_equals_the_full_head(advantage, beta, arch, cap):
    """GRPO/RLOO's loss, every metric (entropy and KL to the reference included) and the
    gradient, with the head only on the completion tokens in chunks of 2 = the full head."""
    from jaxalign.algorithms import grpo

    graphdef, params = nnx.split(_model(arch, cap))
    batch = _rollouts()
    runs = [_loss_and_grads(grpo.make_loss(graphdef, grpo.Config(advantage=advantage, beta=beta,
                                                                 chunk_size=chunk), temperature=0.7),
                            params, batch) for chunk in (None, 2)]
    _assert_same(runs[1], runs[0])
    assert runs[0][1]["entropy"] > 0.1


def test_ppo_loss_with_chunk_size_equals_the_full_head():
    """PPO's loss (policy and value terms), its metrics and the gradient of policy and critic
    with the head over the completion slots in chunks of 3 = the full head."""
    from jaxalign.algorithms import ppo
    from jaxalign.models.heads import scalar_head_from_lm

    policy_def, policy = nnx.split(_model())
    critic_def, critic = nnx.split(scalar_head_from_lm(_model(seed=2), seed=3))
    batch = _rollouts()
    n = batch["input_ids"].shape[0]
    rng = np.random.default_rng(1)
    batch.update(advantages=jnp.asarray(rng.standard_normal((n, T)), jnp.float32),
                 returns=jnp.asarray(rng.standard_normal((n, T)), jnp.float32),
                 values=jnp.asarray(rng.standard_normal((n, T)), jnp.float32))
    params = {"policy": policy, "critic": critic}
    runs = [_loss_and_grads(ppo.make_loss(policy_def, critic_def, ppo.Config(chunk_size=chunk, value_clip=0.2),
                                          temperature=0.9, t=T), params, batch) for chunk in (None, 3)]
    _assert_same(runs[1], runs[0])


def test_reference_forward_scores_only_the_completion_tokens():
    """The experience phase's reference log-probs with ``chunk_size``: the full forward's on
    every completion token, 0 elsewhere."""
    from jaxalign.algorithms.experience import make_logps_fn

    graphdef, params = nnx.split(_model())
    b = _rollouts()
    full = make_logps_fn(graphdef, 0.8)(params, b["input_ids"], b["attention_mask"])
    part = make_logps_fn(graphdef, 0.8, chunk_size=2)(params, b["input_ids"], b["attention_mask"],
                                                       b["completion_mask"])
    mask = np.asarray(b["completion_mask"])
    np.testing.assert_allclose(np.asarray(part)[mask], np.asarray(full)[mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(part)[~mask], 0.0)


@pytest.mark.parametrize("algorithm,section,over", [
    ("grpo", "grpo", ["grpo.beta=0.04"]),
    ("ppo", "ppo", ["ppo.critic_warmup_steps=0"]),
    ("raft", "raft", []),
    ("online-dpo", "online_dpo", []),
])
def test_online_run_with_chunk_size_logs_what_the_full_head_logs(tmp_path, algorithm, section, over):
    """Two iterations of each online algorithm with ``<section>.chunk_size=3`` log the same
    numbers (rewards, losses, KL, entropy, gradient norms) as without: the sampler is
    unaffected and every loss and reference forward gets the same log-probs."""
    from jaxalign.train.plots import is_throughput

    common = [*SMALLEST_MODEL, "train.steps=2", "train.eval_every=0", *over]
    assert run_cli(algorithm, tmp_path / "full", *common) == 0
    assert run_cli(algorithm, tmp_path / "chunk", *common, f"{section}.chunk_size=3") == 0
    full, chunk = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "chunk")
    assert len(full) == len(chunk) >= 2
    compared = 0
    for a, b in zip(full, chunk):
        for k, v in a.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not is_throughput(k) and k != "step":
                # Fractions of clipped tokens count values at a threshold: after step 1 a last-bit
                # difference in the update may move one of a few hundred across it.
                tol = 0.02 if "clip" in k and a.get("step", 1) > 1 else 1e-5
                assert b[k] == pytest.approx(v, rel=1e-4, abs=tol), (k, a.get("step"))
                compared += 1
    assert compared >= 10
