"""The non-finite guard as a run meets it: a NaN step leaves the parameters as they were (the
final weights equal the closed form over the finite steps only), every skipped step is counted
whatever train.log_every is, N skipped steps in a row stop the run with one line naming the
steps (exit 2) even when the streak ends between two log steps, an update that would overflow a
parameter is skipped too, and the checkpoints of such a run hold finite values only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.cli import main
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.parallel import make_mesh
from jaxalign.train.guard import SkipCounter
from jaxalign.train.job import Job
from jaxalign.train.loop import run
from jaxalign.train.metrics import read_metrics
from jaxalign.train.state import TrainState, make_train_step

LR = 0.5


class Batches:
    """Batch ``t`` (1-based) is ``x_t`` = [t, -t, 2t] / 10, or NaN at the ``bad`` steps."""

    def __init__(self, bad=()):
        self.bad, self.t = set(bad), 0

    @staticmethod
    def x(t):
        return np.asarray([t, -t, 2 * t], np.float32) / 10

    def __next__(self):
        self.t += 1
        x = np.full(3, np.nan, np.float32) if self.t in self.bad else self.x(self.t)
        return {"x": x[None, :]}

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, s):
        self.t = s["t"]


def linear_loss(params, batch, frozen, rng, extras):
    # d loss / d w = x: with plain SGD, w_T = w_0 - LR * sum of x_t over the applied steps.
    return jnp.sum(params["w"] * batch["x"][0]), (jnp.float32(1.0), {}, extras)


def run_linear(tmp_path, steps, bad, log_every, max_bad=10):
    cfg = RunConfig()
    cfg.quiet, cfg.train.plots, cfg.train.save_final = True, False, False
    cfg.train.log_every, cfg.train.max_nonfinite_steps = log_every, max_bad
    job = Job(params={"w": jnp.zeros(3)}, loss_fn=linear_loss, tx=optax.sgd(LR), schedule=None,
              total_steps=steps, train_batches=Batches(bad), mesh=make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
              count_tokens=lambda b: 1)
    return run(cfg, job, tmp_path / "run")


def test_nan_steps_leave_the_params_and_every_skip_is_counted(tmp_path):
    bad = {2, 3, 5}
    out = run_linear(tmp_path, steps=8, bad=bad, log_every=4)
    good = [t for t in range(1, 9) if t not in bad]
    want = -LR * sum(Batches.x(t) for t in good)  # closed form: only the finite steps moved w
    np.testing.assert_allclose(np.asarray(out["state"].params["w"]), want, rtol=1e-6)
    assert out["skipped"] == 3 and out["steps"] == 8
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # Logged every 4 steps: the running count includes the steps between the log steps.
    assert [(r["step"], r["skipped_steps"]) for r in rows if "loss" in r] == [(4, 2), (8, 3)]


def test_n_in_a_row_stops_even_between_log_steps(tmp_path):
    # Steps 2-4 skip, step 5 (the log step) does not: the streak is over when the loop logs.
    with pytest.raises(JaxalignError) as e:
        run_linear(tmp_path, steps=10, bad={2, 3, 4}, log_every=5, max_bad=3)
    assert str(e.value).startswith("3 steps in a row had a non-finite loss or gradient (steps 2-4, "
                                   "train.max_nonfinite_steps=3); stopping.")
    # Two in a row never stop it.
    assert run_linear(tmp_path / "b", steps=6, bad={2, 3, 5}, log_every=5, max_bad=3)["skipped"] == 3


def test_skip_counter_counts_ready_device_values_and_host_values():
    c = SkipCounter(limit=3)
    for step, v in enumerate([0.0, 1.0, 0.25, 0.0, 1.0], start=1):  # 0.25: a partly skipped PPO step
        c.add(step, jnp.float32(v) if step % 2 else v)
    c.flush()
    assert (c.total, c.in_row) == (3, 1)
    resumed = SkipCounter(limit=3, in_row=2)  # a run resumed in the middle of a streak
    with pytest.raises(JaxalignError, match=r"3 steps in a row .* \(steps 6-8, "):
        resumed.add(8, 1.0)


def test_an_update_that_overflows_a_param_is_skipped():
    tx = optax.sgd(1e38)
    step = jax.jit(make_train_step(linear_loss, tx))
    s0 = TrainState.create({"w": jnp.ones(3)}, tx, 0)
    s1, m = step(s0, {"x": jnp.asarray([[10.0, 0.0, 0.0]])}, None)  # finite loss and gradient
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert float(m["skipped"]) == 1.0 and int(s1.bad_steps) == 1  # w - 1e39 would be -inf
    np.testing.assert_array_equal(s1.params["w"], [1.0, 1.0, 1.0])


def test_a_diverging_run_stops_with_one_line_and_finite_checkpoints(tmp_path, capsys):
    # lr=1e30: step 1 moves the weights to ~1e30 (finite), after which every loss overflows.
    run_dir = tmp_path / "run"
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run_dir), "--quiet",
               "train.steps=10", "train.log_every=5", "train.save_every=1", "train.max_nonfinite_steps=3",
               "train.eval_every=0", "data.eval_fraction=0", "data.buckets=[128]", "train.plots=false",
               "optim.lr=1e30", "optim.schedule=constant", "optim.warmup_steps=0"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip() and not l.startswith("data.")]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: 3 steps in a row had a non-finite loss or gradient (steps 2-4, ")
    import orbax.checkpoint as ocp

    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 3]  # saving step 4 was refused: the streak was found first
    mgr = ocp.CheckpointManager(run_dir / "checkpoints")
    for s in steps:
        state = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        leaves = jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"])
        assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
        assert max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(state["params"])) > 1e20
    mgr.close()
