"""The two kinds of stage of ``benchmarks/alignment_table.py``, each meant to run in its own
process: :func:`prepare` (SFT -> reward model -> the reference's held-out samples) and
:func:`run_row` (one algorithm from the SFT policy under the compute budget, then evaluated)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxalign import demo

import alignment_stages as st


def _run(cfg, job, run_dir: Path) -> dict:
    from jaxalign.train.loop import run

    out = run(cfg, job, run_dir)
    st.remove_checkpoints(run_dir)
    return out


def _write_prompts(tok, data: Path) -> None:
    for split in demo.SPLITS:
        st.write_jsonl(data / f"{split}.jsonl",
                       [{"prompt": demo.render_prompt(tok, o), "opening": o} for o in demo.movie_prompts(split)])


# How much of the train split the set-up uses (sampling and training 135M models on 2 CPU cores is
# the cost; see the README's "Alignment table" section).
PREP = {"sft_prompts": 128, "sft_max_steps": 10, "rm_prompts": 200, "rm_epochs": 1}


def prepare(work: Path, quick: bool, seed: int = 0) -> dict:
    """SFT -> reward model, and the reference's held-out samples; writes ``work/prep.json``.

    1. The base model samples 2 completions for each of the first ``PREP["sft_prompts"]`` train
       prompts; the VADER-better one, cut after its last sentence, is a demonstration when its
       VADER score is > 0 (the stand-in for human demonstrations: the gold judge picks them). SFT
       on those: one epoch, at most ``PREP["sft_max_steps"]`` steps of 8.
    2. The SFT policy samples 2 completions for each of the first ``PREP["rm_prompts"]`` train
       prompts (reward-model pairs, VADER-labelled, ties dropped) and 2 per held-out prompt
       (held-out pairs, never trained on); the reward model (SFT backbone + scalar head,
       Bradley-Terry) trains ``PREP["rm_epochs"]`` epochs on the former and its accuracy is
       measured on the latter, scoring the sampled tokens as the RL runs do.
    3. The SFT policy's held-out samples (the evaluator's fixed key) are saved: the fixed text the
       perplexity column is measured on. The base and SFT rows of the table are evaluated.
    """
    import jax

    from jaxalign import algorithms
    from jaxalign.algorithms import common
    from jaxalign.rewards import RewardConfig, build_reward

    sizes, clock, data = st.sizes_for(quick), st.Clock(), work / "data"
    info: dict = {"load_start": st.load_avg(), "quick": quick}
    cfg0 = st.load(st.stage_config("sft", sizes, work, steps=1, seed=seed, quick=quick), work / "sft" / "config0.yaml")
    tok, mesh = common.tokenizer_from(cfg0), common.mesh_from(cfg0)
    _write_prompts(tok, data)
    base = common.model_from(cfg0, mesh, tok)
    ev_base = st.make_evaluator(cfg0, work, quick, seed, base, tok, mesh)
    base_params = ev_base.ref_params
    del base
    key = jax.random.key(seed)

    st.say("prep: sampling SFT demonstrations from the base model (2 per train prompt)")
    lim = (lambda k: None) if quick else PREP.get  # noqa: E731
    groups = st.sample_groups(ev_base, base_params, data / "train.jsonl", 2, jax.random.fold_in(key, st._SALT_SFT),
                              limit=lim("sft_prompts"))
    vader = st.vader_scores(groups)
    demos = st.best_demos(groups, vader, min_score=None if quick else 0.0, need_sentence=not quick)
    info["sft_data"] = {"prompts": len(groups), "demonstrations": len(demos),
                        "mean_vader": float(np.mean([d["score"] for d in demos])) if demos else None,
                        "base_sample_vader_mean": float(np.mean(np.concatenate(vader)))}
    st.write_jsonl(data / "sft.jsonl", demos)
    info["time_sample_sft_s"] = clock.wall()

    batch = sizes.batch_size or 8
    sft_steps = 3 if quick else max(1, min(len(demos) // batch, PREP["sft_max_steps"]))
    cfg = st.load(st.stage_config("sft", sizes, work, steps=sft_steps, seed=seed, quick=quick),
                  work / "sft" / "config.yaml")
    st.say(f"prep: SFT, {sft_steps} steps of {batch} demonstrations")
    t = st.Clock()
    out = _run(cfg, algorithms.get("sft").build_job(cfg), work / "sft")
    info["sft"] = {"steps": out["steps"], "wall_s": t.wall(), "cpu_s": t.cpu(), "final_loss": out["metrics"].get("loss")}

    cfg_rm0 = st.load(st.stage_config("rm", sizes, work, steps=1, seed=seed, quick=quick), work / "rm" / "config0.yaml")
    sft_model = common.model_from(cfg_rm0, mesh, tok)
    ev = st.make_evaluator(cfg_rm0, work, quick, seed, sft_model, tok, mesh)
    del sft_model
    st.say("prep: sampling reward-model pairs from the SFT policy")
    g_train = st.sample_groups(ev, ev.ref_params, data / "train.jsonl", 2, jax.random.fold_in(key, st._SALT_RM),
                               limit=lim("rm_prompts"))
    g_held = st.sample_groups(ev, ev.ref_params, data / "heldout.jsonl", 2, jax.random.fold_in(key, st._SALT_RM_EVAL))
    v_train, v_held = st.vader_scores(g_train), st.vader_scores(g_held)
    rows, pstats = st.pairs_from(g_train, v_train, allow_ties=quick)
    held_rows, hstats = st.pairs_from(g_held, v_held, allow_ties=False)
    st.write_jsonl(data / "rm_pairs.jsonl", rows)
    rm_batch = sizes.batch_size or 16
    rm_steps = 3 if quick else max(1, len(rows) // rm_batch) * PREP["rm_epochs"]
    cfg_rm = st.load(st.stage_config("rm", sizes, work, steps=rm_steps, seed=seed, quick=quick),
                     work / "rm" / "config.yaml")
    st.say(f"prep: reward model, {len(rows)} pairs, {rm_steps} steps of {rm_batch}")
    t = st.Clock()
    out = _run(cfg_rm, algorithms.get("rm").build_job(cfg_rm), work / "rm")
    info["rm"] = {"pairs": pstats["pairs"], "ties_dropped": pstats["ties_dropped"],
                  "empty_or_identical": pstats["empty_or_identical"], "steps": out["steps"],
                  "wall_s": t.wall(), "cpu_s": t.cpu(), "final_loss": out["metrics"].get("loss")}
    rm = build_reward(RewardConfig(kind="model", path=str(work / "rm" / "final")), tok, mesh)
    info["rm"].update(_rm_accuracy(rm, g_train, pstats["index"], "train"),
                      **_rm_accuracy(rm, g_held, hstats["index"], "heldout"))
    s_held = np.concatenate(st.rm_scores(rm, g_held))
    info["rm"]["heldout_corr_with_vader"] = float(np.corrcoef(s_held, np.concatenate(v_held))[0, 1])

    st.say("prep: evaluating the base and SFT policies on the held-out prompts")
    ref = ev.run(ev.ref_params, kl=False).arrays
    np.savez_compressed(work / "ref_samples.npz", **ref)
    info["rows"] = {"base": st.strip_arrays(st.evaluate(ev, base_params, rm, ref)),
                    "sft": st.strip_arrays(st.evaluate(ev, ev.ref_params, rm, ref, kl=False))}
    info.update(wall_s=clock.wall(), cpu_s=clock.cpu(), load_end=st.load_avg(), peak_rss_gib=st.peak_rss_gib())
    (work / "prep.json").write_text(json.dumps(info, indent=1))
    return info


def _rm_accuracy(rm, groups, index, tag: str) -> dict:
    scores = st.rm_scores(rm, groups)
    right = [scores[g][w] > scores[g][l] for g, w, l in index]
    return {f"{tag}_pairs": len(right), f"{tag}_accuracy": float(np.mean(right)) if right else None}


def _counter(fn, box: dict, key: str):
    def wrapped(batch):
        n = fn(batch)
        box[key] = box.get(key, 0) + n
        return n

    return wrapped


def _rollouts_per_step(cfg) -> int:
    a, b = cfg.algo, cfg.train.batch_size
    if cfg.algorithm == "raft":
        return b * (round(1 / a.alpha) if a.ranking == "local" else 1)
    if cfg.algorithm in ("ppo", "grpo"):
        return b * a.num_generations
    return b * 2 if cfg.algorithm == "online-dpo" else 0


def _curves(metrics_file: Path) -> dict:
    """Per-step training curves: the proxy reward of the step's samples and the KL to the
    reference the algorithm logs (PPO's ``kl_ref``: per-sequence, GRPO's), where there is one."""
    rows = [json.loads(x) for x in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    rows = [r for r in rows if "step_time" in r]
    pick = lambda r, *ks: next((float(r[k]) for k in ks if k in r), None)  # noqa: E731
    return {"step": [r["step"] for r in rows], "reward": [pick(r, "reward/mean", "reward/all_mean") for r in rows],
            "kl_ref": [pick(r, "kl_ref") for r in rows], "loss": [pick(r, "loss") for r in rows],
            "response_length": [pick(r, "response_length") for r in rows]}


def run_row(row: str, work: Path, quick: bool, *, seed: int = 0, budget_s: float | None = None,
            clock: str = "cpu", wall_cap_s: float | None = None, steps: int | None = None) -> dict:
    """Train table row ``row`` from the SFT policy until the budget (or ``steps``) is spent and
    evaluate it; writes ``work/<row>/result.json``. The budget counts everything the algorithm
    needs after the SFT policy and reward model exist: sampling and labelling its offline data
    (DPO: 2 samples per prompt, RM-labelled pairs; IFT: the RM-best of 2 samples per prompt),
    building the job (loading models, DPO's reference log-probs) and every step, compilation
    included."""
    from jaxalign import algorithms
    from jaxalign.algorithms import common
    from jaxalign.demo_report import make_pairs
    from jaxalign.rewards import RewardConfig, build_reward

    import jax

    alg, sizes, run_dir = st.ALGORITHMS[row], st.sizes_for(quick), work / row
    info: dict = {"row": row, "algorithm": alg, "load_start": st.load_avg()}
    raw = st.algorithm_config(row, sizes, work, steps=steps or 10**6, seed=seed, quick=quick)
    cfg = st.load(raw, run_dir / "run_config.yaml")
    cfg.quiet = True
    tok, mesh = common.tokenizer_from(cfg), common.mesh_from(cfg)
    ev = st.make_evaluator(cfg, work, quick, seed, common.model_from(cfg, mesh, tok), tok, mesh)
    rm = build_reward(RewardConfig(kind="model", path=str(work / "rm" / "final")), tok, mesh)
    ref = dict(np.load(work / "ref_samples.npz"))

    budget = st.Budget(budget_s, clock, wall_cap_s)
    n_offline = st.OFFLINE_PROMPTS["quick" if quick else "full"]
    counts = {"generated_tokens": 0}
    if alg == "dpo":
        vader, ev.reward = ev.reward, rm  # the pairs are labelled by the reward model
        info["data"] = make_pairs(ev, work / "data" / "train.jsonl", work / "data" / "pairs.jsonl", n_offline, seed)
        ev.reward = vader
        counts["generated_tokens"] += n_offline * 2 * sizes.max_new_tokens  # upper bound: lengths not returned
    if alg == "ift":
        groups = st.sample_groups(ev, ev.ref_params, work / "data" / "train.jsonl", 2,
                                  jax.random.fold_in(jax.random.key(seed), st._SALT_IFT), limit=n_offline)
        demos = st.best_demos(groups, st.rm_scores(rm, groups), min_score=None, need_sentence=not quick)
        st.write_jsonl(work / "data" / "ift.jsonl", demos)
        info["data"] = {"prompts": len(groups), "demonstrations": len(demos)}
        counts["generated_tokens"] += int(sum(g.lengths.sum() for g in groups))
    info["data_cpu_s"], info["data_wall_s"] = budget.used()
    job = algorithms.get(alg).build_job(cfg)
    job = dataclasses.replace(job, evaluate=None, experience=budget.wrap(job.experience),
                              count_tokens=_counter(job.count_tokens, counts, "trained_tokens"))
    out = _run(cfg, job, run_dir)
    cpu, wall = budget.used()
    policy = out["state"].params["policy"] if alg == "ppo" else out["state"].params
    curves = _curves(run_dir / "metrics.jsonl")
    per = _rollouts_per_step(cfg)
    counts["generated_tokens"] += int(sum((x or 0) * per for x in curves["response_length"]))
    st.say(f"{row}: {out['steps']} steps in {cpu:.0f} CPU-s / {wall:.0f} s; evaluating")
    res = st.evaluate(ev, policy, rm, ref)
    info.update(st.strip_arrays(res), steps=out["steps"], budget_cpu_s=cpu, budget_wall_s=wall,
                ended_by=budget.ended_by or ("steps" if steps else None), skipped_steps=out["skipped"],
                curves=curves, load_end=st.load_avg(), peak_rss_gib=st.peak_rss_gib(), **counts)
    (run_dir / "result.json").write_text(json.dumps(info, indent=1))
    return info
