"""Memory preflight: the estimate's parts against hand-computed byte counts, the refusal at
exactly the estimate (one line, naming the knobs, nothing written), acceptance at the limit,
one compile for preflight + training, the knobs really lowering memory, the longest batch
being the largest a run yields, and online jobs checked on their first experience batch."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.config import RunConfig
from jaxalign.data import BatchIterator, bucket_length
from jaxalign.errors import JaxalignError
from jaxalign.parallel import make_mesh
from jaxalign.train.compile import shardings_of, state_shardings
from jaxalign.train.job import Job
from jaxalign.train.loop import run
from jaxalign.train.preflight import estimate, longest_batch, parse_bytes
from jaxalign.train.state import TrainState, make_train_step

D_IN, D_OUT = 256, 64


class Batches:
    """An endless iterator of ``{"x": [b, D_IN]}`` batches with the resumable-iterator API."""

    def __init__(self, b: int):
        self.b, self.i = b, 0

    def __next__(self):
        self.i += 1
        return {"x": np.random.default_rng(self.i).normal(size=(self.b, D_IN)).astype(np.float32)}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def loss_fn(params, batch, frozen, rng, extras):
    h = jnp.tanh(batch["x"] @ params["w"]) + params["b"]
    return jnp.mean(h ** 2), (jnp.float32(batch["x"].shape[0]), {}, extras)


def tiny_job(b=16, n_micro=1, experience=None) -> tuple[RunConfig, Job]:
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, jax.devices()[:8])
    params = {"w": jax.device_put(jnp.ones((D_IN, D_OUT)) * 0.01, NamedSharding(mesh, P("fsdp", None))),
              "b": jax.device_put(jnp.zeros((D_OUT,)), NamedSharding(mesh, P()))}
    cfg = RunConfig()
    cfg.quiet, cfg.train.steps, cfg.train.batch_size = True, 3, b
    cfg.train.micro_batch_size = b // n_micro
    cfg.train.plots = cfg.train.save_final = False
    job = Job(params=params, loss_fn=loss_fn, tx=optax.adam(1e-3), schedule=None, total_steps=3,
              train_batches=Batches(b), mesh=mesh, n_micro=n_micro, count_tokens=lambda b: 0,
              experience=experience)
    return cfg, job


def job_estimate(cfg, job):
    """The estimate for ``job``, set up as :func:`run` sets it up (shardings, donation)."""
    state = TrainState.create(job.params, job.tx, 0)
    state = jax.device_put(state, state_shardings(state, job.mesh, job.tx))
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro),
                   out_shardings=(shardings_of(state), None), donate_argnums=(0,))
    return estimate(step, state, longest_batch(job.train_batches), job.frozen, job.mesh, cfg)


def test_parse_bytes():
    assert parse_bytes(None) is None
    assert parse_bytes(1234) == 1234
    assert parse_bytes("2GiB") == 2 * 1024**3 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1.5 kib") == 1536 and parse_bytes("1e9") == 10**9
    for bad in ("lots", "-1GiB", "0", "3 parsecs"):
        with pytest.raises(JaxalignError, match=r"config key 'train.device_memory_limit'"):
            parse_bytes(bad)


def test_estimate_parts_match_hand_counts():
    cfg, job = tiny_job(b=16)
    est = job_estimate(cfg, job)
    # w [256, 64] f32 split 8 ways over fsdp; b [64] f32 replicated.
    params = D_IN * D_OUT * 4 // 8 + D_OUT * 4
    assert est.params == params
    assert est.opt_state == 4 + 2 * params  # Adam: int32 count + mu + nu like the params
    assert est.other_state == 4 + 8 + 4  # step int32, PRNG key data uint32[2], bad_steps int32
    assert est.batch == 16 * D_IN * 4 // 8 and est.frozen == 0
    # XLA's own count of the step's argument bytes per device agrees with the hand count.
    assert est.arguments == params + (4 + 2 * params) + 16 + est.batch
    # The donated train state is reused for the new state (not held twice).
    assert est.aliased == params + (4 + 2 * params) + 16
    assert est.total == est.arguments + est.outputs - est.aliased + est.temp + est.code
    assert est.temp > 0 and est.devices == 8


def test_micro_batches_and_shorter_batches_lower_the_estimate():
    big = job_estimate(*tiny_job(b=512))
    accumulated = job_estimate(*tiny_job(b=512, n_micro=8))
    small = job_estimate(*tiny_job(b=64))
    # Activations of [512, 64] per step vs [64, 64] per micro-batch.
    assert accumulated.temp < big.temp and small.temp < big.temp
    assert accumulated.params == big.params and accumulated.batch == big.batch


def test_refuses_what_does_not_fit_and_writes_nothing(tmp_path):
    cfg, job = tiny_job()
    need = job_estimate(cfg, job).total
    cfg.train.device_memory_limit = need - 1
    cfg.model.remat = False  # the advice names the next modes up: dots (or true)
    with pytest.raises(JaxalignError) as e:
        run(cfg, job, tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"the train step needs about ") and "(train.device_memory_limit); to fit: " in msg
    for knob in ("train.micro_batch_size (now 16", "data.max_length (now 512)", "model.remat=dots"):
        assert knob in msg, msg
    assert not (tmp_path / "run").exists()
    cfg.model.remat = "dots"  # the default; the next step up: whole blocks
    with pytest.raises(JaxalignError, match=r"set model\.remat=true"):
        run(cfg, job, tmp_path / "run")


def test_accepts_at_the_limit_and_compiles_the_step_once(tmp_path, caplog):
    cfg, job = tiny_job()
    cfg.train.device_memory_limit = job_estimate(cfg, job).total
    cfg.quiet = False
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            out = run(cfg, job, tmp_path / "run")
    finally:
        jax.config.update("jax_log_compiles", False)
    assert out["steps"] == 3
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    assert len(compiles) == 1, compiles  # the preflight's executable is the one training runs


def test_online_jobs_are_checked_on_the_first_experience_batch(tmp_path):
    seen = []

    def experience(state, batch):  # turns 16 prompts into 4x as many rows, as sampling would
        seen.append(batch["x"].shape)
        return {"x": np.repeat(batch["x"], 4, axis=0)}, {}

    cfg, job = tiny_job(b=16, experience=experience)
    small = job_estimate(cfg, job)  # of a 16-row batch: smaller than the 64-row one trained on
    cfg.train.device_memory_limit = small.total
    with pytest.raises(JaxalignError, match=r"lower data.max_prompt_length \(now 256\)") as e:
        run(cfg, job, tmp_path / "run")
    assert "per device but" in str(e.value) and seen == [(16, D_IN)]  # stopped before any step


def test_longest_batch_is_the_largest_the_iterator_yields():
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(37):
        n = int(rng.integers(3, 90))
        examples.append({"input_ids": np.arange(n, dtype=np.int32), "completion_mask": np.ones(n, np.int32)})
    it = BatchIterator(examples, 4, seed=1, pad_id=0, buckets="pow2", max_length=100)
    shapes = {tuple(next(it)["input_ids"].shape) for _ in range(len(it))}
    want = max(shapes, key=lambda s: s[1])
    assert want == (4, bucket_length(max(len(e["input_ids"]) for e in examples), "pow2", 100))
    position = it.state_dict()
    got = longest_batch(it)
    assert tuple(got["input_ids"].shape) == want and it.state_dict() == position
