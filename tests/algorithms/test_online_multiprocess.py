"""Every online algorithm on two processes (4 simulated CPU devices each, a localhost
coordinator) equals one process with 8 devices and the same mesh: every logged number (training
and held-out evaluation) and the exported weights, for GRPO, RLOO, PPO-max, vanilla PPO, RAFT with
local and with global ranking, and online DPO; GRPO also with DAPO's dynamic sampling (its
refill draws) and with a reward model (scored collectively on the mesh). A PPO-max run whose process 1 is SIGKILLed, then
relaunched on both processes, ends bit-exactly where the uninterrupted two-process run ends. A
text reward scores only its own process's rows, and a reward that fails on one process stops
both with one line naming it.

Tolerances: the cross-process sums go through gloo in another order than the in-process ones,
so numbers agree to 1e-5 (relative or absolute), not bit for bit; fractions of elements past a
threshold (clip fractions, accuracies) may flip an element on that noise and agree to 0.01.
Adam at lr 1e-3 with eps 1e-4, not the configs' 1e-2 and 1e-8: Adam's first updates are about
lr x sign(g) on coordinates whose gradient is noise-sized (embedding rows of tokens never
sampled), so summation-order noise alone moved weights by 8e-3 at the configs' settings, and by
3e-4 at lr 1e-3 (measured, RLOO); eps 1e-4 leaves real gradients' updates as they were and
noise-sized ones at noise size.

The reference is an in-test run in this (8-device) pytest process, run while the two processes
run.
"""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.cli import main
from jaxalign.train.metrics import read_metrics
from tests.multiproc import Processes
from tests.procenv import HANG_S, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", "train.eval_every=2", "train.eval_at_start=false",
             "train.plots=false", "train.save_every=1", "optim.lr=1.0e-3", "optim.eps=1.0e-4"]
CASES = {
    "grpo": ("grpo", ()),
    "rloo": ("grpo", ("grpo.advantage=rloo",)),
    "ppo-vanilla": ("ppo", ("ppo.preset=vanilla", "ppo.critic_warmup_steps=1")),
    "raft-local": ("raft", ()),
    "raft-global": ("raft", ("raft.ranking=global",)),
    "online-dpo": ("online-dpo", ()),
}  # and PPO-max, the configs' default, in its own tests below (it is also the resume test's run)
# One critic warm-up iteration (the critic alone), then one of both: each kind of PPO step once.
PPO_MAX = ("ppo.critic_warmup_steps=1",)
TIMINGS = ("step_time", "tokens_per_s")
THRESHOLD_FRACTIONS = re.compile(r"clipfrac|accurac")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    # 4 devices per process: 2 x 4 is the 8-device mesh of the in-process reference.
    return subprocess_env(devices=4)


def command(alg: str, extra=()):
    def argv(run_dir: Path, *more: str, quiet: bool = True) -> list[str]:
        return ([alg, "--config", str(ROOT / "configs" / f"{alg}_tiny.yaml"), "--run-dir", str(run_dir)]
                + (["--quiet"] if quiet else []) + list(more) + OVERRIDES + list(extra))
    return argv


def two_and_one(base: Path, env, alg: str, extra=()) -> tuple[Processes, Path]:
    argv = command(alg, extra)
    two = Processes(base / "two", env, argv=argv)  # starts now; the reference below runs meanwhile
    rc = main(argv(base / "one"))
    two.succeed()  # waited for whatever the reference did
    assert rc == 0
    return two, base / "one"


def rows_by_step(run_dir: Path) -> dict[tuple[int, bool], dict]:
    out = {}
    for r in read_metrics(run_dir / "metrics.jsonl"):
        key = (r["step"], any(k.startswith("eval/") for k in r))
        assert key not in out, key  # each step logged once
        out[key] = r
    return out


def assert_same_metrics(run_dir: Path, ref_dir: Path) -> None:
    got, want = rows_by_step(run_dir), rows_by_step(ref_dir)
    assert sorted(got) == sorted(want) == sorted({(s, False) for s in range(1, STEPS + 1)} | {(STEPS, True)})
    for key, q in want.items():
        r = got[key]
        assert set(r) == set(q), key
        for k in set(q) - {"step", *TIMINGS} - {k for k in q if k.startswith("time/")}:
            tol = 1e-2 if THRESHOLD_FRACTIONS.search(k) else 1e-5
            assert math.isclose(r[k], q[k], rel_tol=tol, abs_tol=tol), (key, k, r[k], q[k])
        if not key[1]:  # tokens of the step: each process counts its own rows, the log sums them
            assert r["tokens_per_s"] * r["step_time"] == pytest.approx(q["tokens_per_s"] * q["step_time"], rel=1e-4)


def assert_same_export(run_dir: Path, ref_dir: Path) -> None:
    got, want = (load_file(str(d / "final" / "model.safetensors")) for d in (run_dir, ref_dir))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one(case, tmp_path, env):
    two, one = two_and_one(tmp_path, env, *CASES[case])
    assert_same_metrics(tmp_path / "two", one)
    assert_same_export(tmp_path / "two", one)
    assert two.stdout(1) == "" and two.stderr(1) == ""  # process 0 alone prints


@pytest.fixture(scope="module")
def ppo_max(tmp_path_factory, env):
    base = tmp_path_factory.mktemp("ppo_max")
    two_and_one(base, env, "ppo", PPO_MAX)
    return base


def test_ppo_max_two_processes_equal_one(ppo_max):
    assert_same_metrics(ppo_max / "two", ppo_max / "one")
    assert_same_export(ppo_max / "two", ppo_max / "one")


def checkpoint_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name)) if d.is_dir() else []


def test_ppo_max_sigkill_of_one_process_then_relaunch_is_bit_exact(ppo_max, tmp_path, env):
    argv = command("ppo", PPO_MAX)
    run = tmp_path / "run"
    procs = Processes(run, env, argv=argv)
    procs.wait_for(lambda: checkpoint_steps(run)[-1:] >= [1], "the checkpoint of step 1")
    procs.procs[1].send_signal(signal.SIGKILL)
    assert procs.procs[1].wait(timeout=HANG_S) == -signal.SIGKILL
    procs.procs[0].kill()  # what a scheduler does to the job's other processes
    procs.procs[0].wait(timeout=HANG_S)
    assert checkpoint_steps(run)[-1] < STEPS and not (run / "final").exists()
    again = Processes(run, env, argv=argv, quiet=False)
    again.succeed()
    assert re.search(r"resumed from \S+ at step 1\b", again.stderr(0)), again.stderr(0)[-2000:]
    want = rows_by_step(ppo_max / "two")
    for key, r in rows_by_step(run).items():  # the same numbers, bit for bit (timings aside)
        q = want[key]
        assert {k: v for k, v in r.items() if k not in TIMINGS and not k.startswith("time/")} == \
               {k: v for k, v in q.items() if k not in TIMINGS and not k.startswith("time/")}, key
    got = (run / "final" / "model.safetensors").read_bytes()
    assert got == (ppo_max / "two" / "final" / "model.safetensors").read_bytes()


REWARD = '''
import pathlib
import jax

def reward(prompts, completions, **columns):
    # Which process scored how many rows, then fail on process 1 only.
    log = pathlib.Path(__file__).with_name(f"rows{jax.process_index()}.txt")
    with log.open("a") as f:
        f.write(f"{len(completions)}\\n")
    if jax.process_index() == 1:
        raise ValueError("no verifier on this host")
    return [float(len(c)) for c in completions]
'''


def test_a_reward_that_fails_on_one_process_stops_both_with_one_line(tmp_path, env):
    fn = tmp_path / "flaky_reward.py"
    fn.write_text(REWARD)
    procs = Processes(tmp_path / "run", env, "grpo.reward.kind=callable", f"grpo.reward.function={fn}:reward",
                      "grpo.reward.pattern=null", "grpo.reward.normalize=false", argv=command("grpo"))
    codes = procs.wait()
    assert codes == [2, 2], procs.report()
    err0, err1 = procs.stderr(0).strip().splitlines(), procs.stderr(1).strip().splitlines()
    assert err1[-1].startswith("error: ") and "no verifier on this host" in err1[-1], err1[-3:]
    assert err0[-1].startswith("error: process 1: ") and "no verifier on this host" in err0[-1], err0[-3:]
    assert "Traceback" not in procs.stderr(0) + procs.stderr(1)
    # Each process scored its own half of the first step's 8 prompts x 4 samples, and no more.
    assert (tmp_path / "rows0.txt").read_text().split() == ["16"]
    assert (tmp_path / "rows1.txt").read_text().split() == ["16"]


# DAPO's dynamic sampling with a reward that is 0 for most groups (a rare letter, counted):
# all-zero groups are dropped and more prompts are drawn, and on two processes those draws gather
# their rows like the step's first batch.
DYNAMIC = ("grpo.dynamic_sampling=true", "grpo.max_refills=2", "grpo.reward.pattern=q",
           "grpo.reward.normalize=false")


def test_dynamic_sampling_two_processes_equal_one(tmp_path, env):
    two, one = two_and_one(tmp_path, env, "grpo", DYNAMIC)
    refills = [r.get("dynamic/refills", 0.0) for r in read_metrics(one / "metrics.jsonl")]
    assert any(n > 0 for n in refills), refills  # the refill path ran, not only the first draw
    assert_same_metrics(tmp_path / "two", one)
    assert_same_export(tmp_path / "two", one)


def test_two_processes_equal_one_with_a_reward_model(tmp_path, env):
    """A reward model runs collectively (the whole batch on the global mesh, its scores brought
    back to every process), unlike a text reward, which scores each process's own rows."""
    from jaxalign.algorithms import common
    from jaxalign.api import save_model
    from jaxalign.config import load_config
    from jaxalign.models.heads import scalar_head_from_lm

    cfg = load_config(ROOT / "configs" / "grpo_tiny.yaml", [], algorithm="grpo")
    lm = common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg), seed_offset=7)
    save_model(scalar_head_from_lm(lm, seed=3), tmp_path / "rm")
    two, one = two_and_one(tmp_path, env, "grpo", (f"grpo.reward={{kind: model, path: {tmp_path / 'rm'}}}",))
    assert_same_metrics(tmp_path / "two", one)
    assert_same_export(tmp_path / "two", one)
