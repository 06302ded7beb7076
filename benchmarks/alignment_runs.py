"""The two kinds of stage of ``benchmarks/alignment_table.py``, each meant to run in its own
process: :func:`prepare` (SFT -> reward model -> the reference's held-out samples) and
:func:`run_row` (one algorithm from the SFT policy under the compute budget, then evaluated)."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

import numpy as np

from jaxalign.examples import demo

import alignment_stages as st
from _common import peak_rss_gib


def _run(cfg, job, run_dir: Path, fresh: bool = True) -> dict:
    """:func:`jaxalign.train.loop.run`, then the checkpoints removed; ``fresh``: first remove what
    an interrupted earlier attempt left in ``run_dir`` (else the loop would resume it)."""
    from jaxalign.train.loop import run

    if fresh:
        st.remove_checkpoints(run_dir)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    out = run(cfg, job, run_dir)
    st.remove_checkpoints(run_dir)
    return out


def _write_prompts(tok, data: Path) -> None:
    for split in demo.SPLITS:
        st.write_jsonl(data / f"{split}.jsonl",
                       [{"prompt": demo.render_prompt(tok, o), "opening": o} for o in demo.movie_prompts(split)])


# How much of the train split the set-up uses (sampling and training 135M models on 2 CPU cores is
# the cost; see benchmarks/README.md, "Alignment table").
PREP = {"sft_prompts": 128, "sft_max_steps": 10, "rm_prompts": 200, "rm_epochs": 1}
PREP_STAGES = ("prep-sft", "prep-rm", "prep-eval")


def _part(work: Path, name: str) -> dict | None:
    f = work / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _save_part(work: Path, name: str, info: dict) -> dict:
    (work / f"{name}.json").write_text(json.dumps(info, indent=1))
    return info


def _setup(work: Path, quick: bool, seed: int, model_from_sft: bool):
    """(tokenizer, mesh, evaluator) with the base model (or the SFT policy) as the evaluator's model."""
    from jaxalign.algorithms import common

    kind = "rm" if model_from_sft else "sft"  # the rm config starts from sft/final
    cfg = st.load(st.stage_config(kind, st.sizes_for(quick), work, steps=1, seed=seed, quick=quick),
                  work / kind / "config0.yaml")
    tok, mesh = common.tokenizer_from(cfg), common.mesh_from(cfg)
    if not (work / "data" / "heldout.jsonl").exists():
        _write_prompts(tok, work / "data")
    return tok, mesh, st.make_evaluator(cfg, work, quick, seed, common.model_from(cfg, mesh, tok), tok, mesh)


def prepare(work: Path, quick: bool, seed: int = 0, stage: str | None = None) -> dict | None:
    """SFT -> reward model -> the reference's held-out samples; each part (``PREP_STAGES``, all
    when ``stage`` is None) is skipped when ``work/<part>.json`` exists, so a run resumes; the
    last writes ``work/prep.json``.

    1. ``prep-sft``: the base model samples 2 completions for each of the first
       ``PREP["sft_prompts"]`` train prompts; the VADER-better one, cut after its last sentence,
       is a demonstration when its VADER score is > 0 (the stand-in for human demonstrations: the
       gold judge picks them). SFT on those: one epoch, at most ``PREP["sft_max_steps"]`` steps of 8.
    2. ``prep-rm``: the SFT policy samples 2 completions for each of the first
       ``PREP["rm_prompts"]`` train prompts, VADER-labelled into pairs (ties dropped); the reward
       model (SFT backbone + scalar head, Bradley-Terry) trains ``PREP["rm_epochs"]`` epochs on them.
    3. ``prep-eval``: the SFT policy samples 2 completions per held-out prompt (held-out pairs,
       never trained on): the RM's pair accuracy, scoring the sampled tokens as the RL runs do;
       its held-out samples under the evaluator's fixed key are saved (the fixed text of the
       perplexity column); the base and SFT rows of the table are evaluated.
    """
    for name in PREP_STAGES if stage is None else (stage,):
        if _part(work, name) is None:
            {"prep-sft": _prep_sft, "prep-rm": _prep_rm, "prep-eval": _prep_eval}[name](work, quick, seed)
    return _part(work, "prep")


def _lim(quick: bool, key: str):
    return None if quick else PREP[key]


def _prep_sft(work: Path, quick: bool, seed: int) -> dict:
    import jax

    from jaxalign import algorithms

    sizes, clock, data = st.sizes_for(quick), st.Clock(), work / "data"
    info: dict = {"load_start": st.load_avg()}
    _, _, ev_base = _setup(work, quick, seed, model_from_sft=False)
    st.say("prep: sampling SFT demonstrations from the base model (2 per train prompt)")
    groups = st.sample_groups(ev_base, ev_base.ref_params, data / "train.jsonl", 2,
                              jax.random.fold_in(jax.random.key(seed), st._SALT_SFT), limit=_lim(quick, "sft_prompts"))
    del ev_base
    vader = st.vader_scores(groups)
    demos = st.best_demos(groups, vader, min_score=None if quick else 0.0, need_sentence=not quick)
    st.write_jsonl(data / "sft.jsonl", demos)
    info["sft_data"] = {"prompts": len(groups), "demonstrations": len(demos),
                        "mean_vader": float(np.mean([d["score"] for d in demos])) if demos else None,
                        "base_sample_vader_mean": float(np.mean(np.concatenate(vader))),
                        "wall_s": clock.wall(), "cpu_s": clock.cpu()}
    batch = sizes.batch_size or 8
    steps = 3 if quick else max(1, min(len(demos) // batch, PREP["sft_max_steps"]))
    cfg = st.load(st.stage_config("sft", sizes, work, steps=steps, seed=seed, quick=quick), work / "sft" / "config.yaml")
    st.say(f"prep: SFT, {steps} steps of {batch} demonstrations")
    t = st.Clock()
    out = _run(cfg, algorithms.get("sft").build_job(cfg), work / "sft")
    info["sft"] = {"steps": out["steps"], "wall_s": t.wall(), "cpu_s": t.cpu(), "final_loss": out["metrics"].get("loss")}
    info.update(load_end=st.load_avg(), peak_rss_gib=peak_rss_gib())
    return _save_part(work, "prep-sft", info)


def _prep_rm(work: Path, quick: bool, seed: int) -> dict:
    import jax

    from jaxalign import algorithms

    sizes, clock, data = st.sizes_for(quick), st.Clock(), work / "data"
    info: dict = {"load_start": st.load_avg()}
    pairs = _part(work, "prep-rm-pairs")
    if pairs is None:  # the sampled pairs are kept: a failed RM training does not resample them
        _, _, ev = _setup(work, quick, seed, model_from_sft=True)
        st.say("prep: sampling reward-model pairs from the SFT policy")
        g_train = st.sample_groups(ev, ev.ref_params, data / "train.jsonl", 2,
                                   jax.random.fold_in(jax.random.key(seed), st._SALT_RM), limit=_lim(quick, "rm_prompts"))
        del ev
        rows, stats = st.pairs_from(g_train, st.vader_scores(g_train), allow_ties=quick)
        st.write_jsonl(data / "rm_pairs.jsonl", rows)
        stats.pop("index")
        pairs = _save_part(work, "prep-rm-pairs", dict(stats, prompts=len(g_train), wall_s=clock.wall(),
                                                        cpu_s=clock.cpu()))
    info["rm_data"] = pairs
    batch = sizes.batch_size or 16
    steps = 3 if quick else max(1, pairs["pairs"] // batch) * PREP["rm_epochs"]
    raw = st.stage_config("rm", sizes, work, steps=steps, seed=seed, quick=quick)
    cfg = st.load(raw, work / "rm" / "config.yaml")
    st.say(f"prep: reward model, {pairs['pairs']} pairs, {steps} steps of {batch}")
    t = st.Clock()
    out = _run(cfg, algorithms.get("rm").build_job(cfg), work / "rm")
    info["rm"] = {"steps": out["steps"], "lr": raw["optim"]["lr"], "wall_s": t.wall(), "cpu_s": t.cpu(),
                  "final_loss": out["metrics"].get("loss")}
    info.update(load_end=st.load_avg(), peak_rss_gib=peak_rss_gib())
    return _save_part(work, "prep-rm", info)


def _prep_eval(work: Path, quick: bool, seed: int) -> dict:
    import jax

    from jaxalign.algorithms import common
    from jaxalign.rewards import RewardConfig, build_reward

    clock, data = st.Clock(), work / "data"
    info: dict = {"quick": quick, "load_start": st.load_avg(), "sft": _part(work, "prep-sft"),
                  "rm": _part(work, "prep-rm")}
    tok, mesh, ev = _setup(work, quick, seed, model_from_sft=True)
    rm = build_reward(RewardConfig(kind="model", path=str(work / "rm" / "final")), tok, mesh)
    st.say("prep: reward-model accuracy on held-out pairs of SFT samples")
    g_held = st.sample_groups(ev, ev.ref_params, data / "heldout.jsonl", 2,
                              jax.random.fold_in(jax.random.key(seed), st._SALT_RM_EVAL))
    v_held = st.vader_scores(g_held)
    _, hstats = st.pairs_from(g_held, v_held, allow_ties=False)
    s_held = np.concatenate(st.rm_scores(rm, g_held))
    corr = float(np.corrcoef(s_held, np.concatenate(v_held))[0, 1]) if np.std(np.concatenate(v_held)) else None
    info["rm_eval"] = dict(_rm_accuracy(rm, g_held, hstats["index"], "heldout"), heldout_corr_with_vader=corr)
    st.say("prep: evaluating the SFT and base policies on the held-out prompts")
    ref = ev.run(ev.ref_params, kl=False).arrays
    np.savez_compressed(work / "ref_samples.npz", **ref)
    rows = {"sft": st.strip_arrays(st.evaluate(ev, ev.ref_params, rm, ref, kl=False))}
    cfg0 = st.load(st.stage_config("sft", st.sizes_for(quick), work, steps=1, seed=seed, quick=quick),
                   work / "sft" / "config0.yaml")
    base = common.model_from(cfg0, mesh, tok)  # KL(base || SFT) on the base model's samples
    import flax.nnx as nnx

    rows["base"] = st.strip_arrays(st.evaluate(ev, nnx.split(base)[1], rm, ref))
    info["rows"] = {"base": rows["base"], "sft": rows["sft"]}
    info.update(wall_s=clock.wall(), cpu_s=clock.cpu(), load_end=st.load_avg(), peak_rss_gib=peak_rss_gib())
    _save_part(work, "prep-eval", {k: v for k, v in info.items() if k != "rows"})
    return _save_part(work, "prep", info)


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
    from jaxalign.examples.demo_report import make_pairs
    from jaxalign.rewards import RewardConfig, build_reward

    import jax

    alg, sizes, run_dir = st.ALGORITHMS[row], st.sizes_for(quick), work / row
    info: dict = {"row": row, "algorithm": alg, "load_start": st.load_avg()}
    raw = st.algorithm_config(row, sizes, work, steps=steps or 10**6, seed=seed, quick=quick)
    cfg = st.load(raw, run_dir / "run_config.yaml")
    cfg.quiet = True
    tok, mesh = common.tokenizer_from(cfg), common.mesh_from(cfg)

    def evaluator_and_rm():
        ev = st.make_evaluator(cfg, work, quick, seed, common.model_from(cfg, mesh, tok), tok, mesh)
        return ev, build_reward(RewardConfig(kind="model", path=str(work / "rm" / "final")), tok, mesh)

    # The offline rows sample their data with the evaluator's copy of the SFT policy; the online
    # ones load it only after training (on a shared 23 GiB machine PPO's four models are enough).
    ev, rm = evaluator_and_rm() if alg in ("dpo", "ift") else (None, None)
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
    state = out.pop("state")
    policy = state.params["policy"] if alg == "ppo" else state.params
    del state, job  # the critic, the optimizer state and the job's models go before evaluation
    gc.collect()
    if ev is None:
        ev, rm = evaluator_and_rm()
    curves = _curves(run_dir / "metrics.jsonl")
    per = _rollouts_per_step(cfg)
    counts["generated_tokens"] += int(sum((x or 0) * per for x in curves["response_length"]))
    st.say(f"{row}: {out['steps']} steps in {cpu:.0f} CPU-s / {wall:.0f} s; evaluating")
    res = st.evaluate(ev, policy, rm, ref)
    info.update(st.strip_arrays(res), steps=out["steps"], budget_cpu_s=cpu, budget_wall_s=wall,
                ended_by=budget.ended_by or ("steps" if steps else None), skipped_steps=out["skipped"],
                curves=curves, load_end=st.load_avg(), peak_rss_gib=peak_rss_gib(), **counts)
    (run_dir / "result.json").write_text(json.dumps(info, indent=1))
    return info
