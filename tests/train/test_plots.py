"""The training plots: the panel plan (every metric, reward/KL/loss first, flat and repeated
curves left out, eval on its train curve with its step-0 point, the compile step out of the
throughput curves), pages past one PNG, and a run that rewrites plots/training.png at its first
eval, before it ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxalign.train import plots
from jaxalign.train.plots import plan_panels

# The metrics a PPO step logs (jaxalign.algorithms.ppo + the loop), 30 of them: more than the 16
# panels the old plot had room for.
PPO_KEYS = ["loss", "pg_loss", "value_loss", "approx_kl", "kl_ref", "kl_coef", "entropy", "clipfrac",
            "value_clipfrac", "value_error", "explained_variance", "returns/mean", "advantages/mean",
            "advantages/std", "reward/mean", "reward/std", "reward/min", "reward/max", "response_length",
            "eos_rate", "grad_norm", "lr", "updates", "skipped", "time/generate", "time/score", "step_time",
            "tokens_per_s", "skipped_steps", "score/mean"]


def ppo_rows(steps=6):
    """Train rows at steps 1..steps (each metric its own varying curve, except the flat and the
    repeated ones below) and eval rows at 0, 3, 6."""
    rows = [{"step": 0, "eval/reward": -1.0, "eval/response_length": 9.0}]
    for s in range(1, steps + 1):
        r = {"step": s}
        for i, k in enumerate(PPO_KEYS):
            r[k] = (i + 1) * 10.0 + s * (i % 5 + 1) + (s * s if i % 2 else 0)
        r["skipped"] = r["skipped_steps"] = 0.0  # flat: nothing to read
        r["updates"] = 4.0                       # flat too
        r["score/mean"] = r["reward/mean"]        # an exact repeat of reward/mean
        r["tokens_per_s"] = 5.0 if s == 1 else 1000.0 + s  # step 1 compiles
        r["step_time"] = 30.0 if s == 1 else 0.1 + s / 100
        rows.append(r)
        if s % 3 == 0:
            rows.append({"step": s, "eval/reward": float(s), "eval/response_length": 9.0 + s})
    return rows


def by_title(panels):
    return {p.title: p for p in panels}


def test_every_metric_of_a_ppo_run_is_in_a_panel():
    panels = plan_panels(ppo_rows())
    shown = {n for p in panels for n in p.names}
    flat = {"skipped", "skipped_steps", "updates"}
    assert set(PPO_KEYS) - flat <= shown, set(PPO_KEYS) - flat - shown
    assert {"pg_loss", "approx_kl", "value_error", "kl_coef"} <= shown  # the ones the 16-panel cap lost
    assert len(panels) > 16
    assert not flat & shown  # constant curves are not drawn


def test_reward_then_kl_then_loss_come_first():
    titles = [p.title for p in plan_panels(ppo_rows())]
    assert titles[0] == "reward/mean"
    first_kl = next(i for i, t in enumerate(titles) if "kl" in t)
    first_loss = titles.index("loss")
    assert all(t.startswith("reward") for t in titles[:first_kl])
    assert first_kl < first_loss
    assert all("kl" in t for t in titles[first_kl:first_loss])
    assert titles[first_loss:first_loss + 3] == ["loss", "pg_loss", "value_loss"]
    # Throughput and timings last.
    assert set(titles[-4:]) == {"tokens_per_s", "step_time", "time/generate", "time/score"}


def test_flat_and_repeated_curves_are_left_out_and_the_repeat_is_named():
    p = by_title(plan_panels(ppo_rows()))
    assert "score/mean" not in p and "updates" not in p and "skipped" not in p
    assert p["reward/mean"].same == ("score/mean",)
    assert plots._title(p["reward/mean"]) == "reward/mean (= score/mean)"


def test_eval_is_drawn_on_its_train_curve_with_the_step_0_point():
    p = by_title(plan_panels(ppo_rows()))
    reward = p["reward/mean"]
    assert [s.name for s in reward.series] == ["reward/mean", "eval/reward"]
    ev = reward.series[1]
    assert ev.eval and ev.steps == (0, 3, 6) and ev.values == (-1.0, 3.0, 6.0)
    assert [s.name for s in p["response_length"].series] == ["response_length", "eval/response_length"]
    assert not any(t.startswith("eval/") for t in p)  # every eval metric has its train curve here

    # Same name, no alias: eval/loss on loss. An eval metric without a train curve: its own panel.
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "eval/loss": 1.5, "eval/bleu": 3.0},
            {"step": 4, "loss": 0.5}, {"step": 4, "eval/loss": 1.2, "eval/bleu": 4.0}]
    p = by_title(plan_panels(rows))
    assert [s.name for s in p["loss"].series] == ["loss", "eval/loss"] and p["loss"].series[1].steps == (2, 4)
    assert [s.name for s in p["eval/bleu"].series] == ["eval/bleu"]


def test_the_compile_step_is_left_out_of_throughput_only():
    p = by_title(plan_panels(ppo_rows()))
    for k in ("tokens_per_s", "step_time", "time/generate", "time/score"):
        assert p[k].series[0].steps == (2, 3, 4, 5, 6), k
    assert p["tokens_per_s"].series[0].values == tuple(1000.0 + s for s in range(2, 7))
    assert p["loss"].series[0].steps == (1, 2, 3, 4, 5, 6)  # other curves keep step 1
    assert plots._title(p["step_time"]).endswith("(after the compile step)")


def test_non_finite_values_logged_as_text_are_gaps():
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": "nan"}, {"step": 3, "loss": 0.5}]
    (panel,) = plan_panels(rows)
    assert panel.series[0].steps == (1, 3)


def test_pages_hold_every_panel_and_stale_pages_are_removed(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ppo_rows()))
    n = len(plan_panels(ppo_rows()))
    assert plots.PER_PAGE < n <= 2 * plots.PER_PAGE
    stale = tmp_path / "plots" / "training_3.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    out = plots.write_plots(tmp_path)
    assert out == tmp_path / "plots" / "training.png"
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["training.png", "training_2.png"]  # no temporary file left, the stale page gone
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Watch:
    """The run's batches, noting at each draw whether plots/training.png exists yet."""

    def __init__(self, batches, png: Path):
        self._b, self.png, self.seen = batches, png, []

    def __iter__(self):
        return self

    def __next__(self):
        self.seen.append(self.png.exists())
        return next(self._b)

    def __getattr__(self, name):  # state_dict, load_state_dict, fingerprint, ...
        return getattr(self._b, name)


def test_a_run_writes_the_plot_at_its_first_eval_before_it_ends(tmp_path):
    import dataclasses

    pytest.importorskip("matplotlib")
    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.train.loop import run

    cfg = load_config("configs/sft_tiny.yaml", ["train.steps=4", "train.eval_every=2", "train.log_every=1",
                                                "train.save_every=0", "train.save_final=false", "train.eval_batches=1",
                                                "data.buckets=[128]", "model.config.num_hidden_layers=1",
                                                "train.report_to=none"], algorithm="sft")
    cfg.quiet = True
    job = algorithms.build_job(cfg)
    run_dir = tmp_path / "run"
    watch = _Watch(job.train_batches, run_dir / "plots" / "training.png")
    run(cfg, dataclasses.replace(job, train_batches=watch), run_dir)
    # Drawn before steps 1 and 2: no plot; after the eval at step 2 (drawing step 3): there.
    assert watch.seen == [False, False, True, True]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    p = by_title(plan_panels(rows))
    assert [s.name for s in p["loss"].series] == ["loss", "eval/loss"]
