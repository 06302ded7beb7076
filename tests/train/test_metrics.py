"""What a logged row holds: the mean over the ``log_every`` steps since the last one (hand
computed on a linear model whose per-step loss is known in closed form), non-finite steps left
out of the mean, ``lr`` taken at the logged step; ``samples.jsonl`` kept across a resume."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.config import RunConfig
from jaxalign.parallel import make_mesh
from jaxalign.train.job import Job
from jaxalign.train.loop import run
from jaxalign.train.metrics import MetricsWriter, interval_mean, read_metrics

LR = 0.5


class Batches:
    """Batch ``t`` (1-based) is ``x_t = [t, -t, 2t] / 10`` (NaN at the ``bad`` steps)."""

    def __init__(self, bad=()):
        self.bad, self.t = set(bad), 0

    def __next__(self):
        self.t += 1
        x = np.asarray([self.t, -self.t, 2 * self.t], np.float32) / 10
        return {"x": (np.full(3, np.nan, np.float32) if self.t in self.bad else x)[None, :]}

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, s):
        self.t = s["t"]


def linear_loss(params, batch, frozen, rng, extras):
    # loss_t = w_{t-1} . x_t; SGD: w_t = w_{t-1} - LR x_t, so loss_t = -LR (x_1 + ... + x_{t-1}) . x_t
    # = -LR * 6 t (1 + ... + t-1) / 100 (x_i . x_t = 6 i t / 100), and grad_norm_t = |x_t| = sqrt(6) t / 10.
    return jnp.sum(params["w"] * batch["x"][0]), (jnp.float32(1.0), {"t": batch["x"][0, 0] * 10}, extras)


def run_linear(tmp_path, steps, log_every, bad=()):
    cfg = RunConfig()
    cfg.quiet, cfg.train.plots, cfg.train.save_final, cfg.train.report_to = True, False, False, "none"
    cfg.train.log_every = log_every
    job = Job(params={"w": jnp.zeros(3)}, loss_fn=linear_loss, tx=optax.sgd(LR), schedule=lambda s: 0.1 * (s + 1),
              total_steps=steps, train_batches=Batches(bad),
              mesh=make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]), count_tokens=lambda b: 1)
    run(cfg, job, tmp_path / "run")
    return [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]


def test_a_logged_row_is_the_mean_of_its_log_every_steps(tmp_path):
    rows = run_linear(tmp_path, steps=6, log_every=3)
    assert [r["step"] for r in rows] == [3, 6]
    # Per-step losses: 0, -0.06, -0.27 | -0.72, -1.5, -2.7 (see linear_loss).
    assert rows[0]["loss"] == pytest.approx((0 - 0.06 - 0.27) / 3, abs=1e-6)
    assert rows[1]["loss"] == pytest.approx((-0.72 - 1.5 - 2.7) / 3, abs=1e-6)
    assert rows[0]["t"] == pytest.approx(2.0) and rows[1]["t"] == pytest.approx(5.0)  # mean of 1,2,3 / 4,5,6
    assert rows[0]["grad_norm"] == pytest.approx(math.sqrt(6) * 2 / 10, rel=1e-5)
    # lr: the schedule at the last step of the interval (step index 2 and 5), not a mean.
    assert rows[0]["lr"] == pytest.approx(0.3) and rows[1]["lr"] == pytest.approx(0.6)


def test_a_skipped_non_finite_step_is_left_out_of_the_mean(tmp_path):
    rows = run_linear(tmp_path, steps=3, log_every=3, bad={2})
    # Step 2 is NaN and skipped (w unchanged): loss_1 = 0, loss_3 = -LR x_1 . x_3 = -0.09.
    assert rows[0]["loss"] == pytest.approx((0 - 0.09) / 2, abs=1e-6)
    assert rows[0]["skipped"] == pytest.approx(1 / 3) and rows[0]["skipped_steps"] == 1


def test_interval_mean_by_hand():
    got = interval_mean([{"loss": 1.0, "lr": 0.1, "a": float("nan")}, {"loss": 2.0, "lr": 0.2, "a": float("nan")},
                         {"loss": 6.0, "lr": 0.3, "b": 4.0}])
    assert got["loss"] == 3.0 and got["lr"] == 0.3 and got["b"] == 4.0
    assert math.isnan(got["a"])  # no finite value at all: the last value, logged as "nan"
    assert list(got) == ["loss", "lr", "a", "b"]


def test_samples_are_kept_up_to_the_resumed_step(tmp_path):
    w = MetricsWriter(tmp_path, report_to="none")
    for step in (2, 4):
        w.samples(step, [{"prompt": "p|1", "completion": f"c{step}\nx", "reward": step / 10}])
    w.samples(4, [{"prompt": "again", "completion": "", "reward": 0}])  # step 4 once only
    w.close()
    path = tmp_path / "samples.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == [{"step": 2, "prompt": "p|1", "completion": "c2\nx", "reward": 0.2},
                    {"step": 4, "prompt": "p|1", "completion": "c4\nx", "reward": 0.4}]
    w = MetricsWriter(tmp_path, resume_step=3, report_to="none")
    w.samples(4, [{"prompt": "q", "completion": "d", "reward": 1.0}])
    w.close()
    assert [(r["step"], r["prompt"]) for r in map(json.loads, path.read_text().splitlines())] == [(2, "p|1"), (4, "q")]
    MetricsWriter(tmp_path, report_to="none").close()  # a fresh run: no samples file until one is logged
    assert not path.exists()
