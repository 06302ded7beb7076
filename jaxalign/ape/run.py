"""The APE pipeline of ``jaxalign ape`` (Zhou et al. 2022, arXiv:2211.01910), per task:
propose candidates (forward mode) -> adaptive multi-stage filter on the training rows -> optional
rounds of resampling around the best -> held-out score of the human instruction, the best APE
instruction and no instruction, by both metrics. Writes ``ape_results.json`` and
``ape_results.md`` (:mod:`jaxalign.ape.report`) into the run directory."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxalign.ape.config import ApeConfig, ApeRunConfig
from jaxalign.ape.filter import adaptive_filter
from jaxalign.ape.propose import propose, vary
from jaxalign.ape.tasks import Task, load_task
from jaxalign.errors import JaxalignError


class _CachedScores:
    """Per-row scores of instructions on the training rows, each (instruction, row) scored once:
    the filter's stages, the final evaluation and the resampling rounds overlap. A stage's
    missing scores, over all its candidates, are computed in one batched call."""

    def __init__(self, metric_many, train):
        self.metric_many, self.train, self.cache = metric_many, train, {}

    def matrix(self, pool):
        def score_fn(cands, rows):
            missing = [(pool[c], r) for c in cands for r in rows if (pool[c], r) not in self.cache]
            if missing:
                got = self.metric_many([(s, *self.train[r]) for s, r in missing])
                self.cache.update({m: float(v) for m, v in zip(missing, got)})
            return np.asarray([[self.cache[(pool[c], r)] for r in rows] for c in cands])

        return score_fn


def _filter_record(pool, result) -> dict:
    return {"candidates": list(pool), "stages": result.stages,
            "finalists": [{"instruction": pool[i], "train_score": s}
                          for i, s in zip(result.finalists, result.final_scores)],
            "best": pool[result.best]}


def search_task(scorer, task: Task, ape: ApeConfig, key, rng: np.random.Generator, step=lambda msg: None) -> dict:
    """APE on one task; returns its record (candidates, filter stages, rounds, held-out table)."""
    train, held = task.split(ape.train_size, ape.heldout_size)
    step(f"{task.name}: proposing")
    pool = propose(scorer, train, num_candidates=ape.num_candidates, num_demos=ape.num_demos,
                   max_new_tokens=ape.proposal_tokens, temperature=ape.proposal_temperature,
                   key=jax.random.fold_in(key, 0), rng=rng)
    if not pool:
        raise JaxalignError(f"task {task.name!r}: the model proposed no usable instruction; raise "
                            "ape.proposal_tokens or ape.num_candidates")
    metric_many = scorer.logprobs_many if ape.metric == "logprob" else scorer.exact_match_many
    scores = _CachedScores(metric_many, train)
    step(f"{task.name}: filtering {len(pool)} candidates")
    result = adaptive_filter(len(pool), len(train), scores.matrix(pool), ape.stage_sizes, ape.keep_quantile, rng)
    rounds = [_filter_record(pool, result)]
    seen = set(pool)
    for r in range(ape.resample_rounds):
        ranked = sorted(zip(result.final_scores, result.finalists), key=lambda t: -t[0])
        top = [pool[i] for _, i in ranked[:ape.resample_top]]
        step(f"{task.name}: resampling round {r + 1}")
        new = vary(scorer, top, per_instruction=ape.resample_variations, max_new_tokens=ape.proposal_tokens,
                   temperature=ape.proposal_temperature, key=jax.random.fold_in(key, r + 1), exclude=sorted(seen))
        seen.update(new)
        pool = top + new
        result = adaptive_filter(len(pool), len(train), scores.matrix(pool), ape.stage_sizes, ape.keep_quantile, rng)
        rounds.append(_filter_record(pool, result))
    best = pool[result.best]
    step(f"{task.name}: held-out evaluation")
    prompts = [(label, s) for label, s in (("human", task.human), ("ape", best), ("none", None))
               if label != "human" or s is not None]
    items = [(s, x, y) for _, s in prompts for x, y in held]
    lp = scorer.logprobs_many(items).reshape(len(prompts), len(held)).mean(axis=1)
    em = scorer.exact_match_many(items).reshape(len(prompts), len(held)).mean(axis=1)
    table = [{"row": label, "instruction": s, "logprob": float(a), "exact_match": float(b)}
             for (label, s), a, b in zip(prompts, lp, em)]
    return {"task": task.name, "train_rows": len(train), "heldout_rows": len(held), "metric": ape.metric,
            "best": best, "best_train_score": max(result.final_scores), "rounds": rounds, "table": table}


def run_ape(cfg: ApeRunConfig, model=None, tokenizer=None) -> dict:
    """Run APE over ``cfg.ape.tasks``; writes the results into the run directory and returns
    ``{"run_dir", "wall_s", "tasks": [search_task records]}``. ``model``/``tokenizer``: already
    loaded ones instead of ``cfg.model`` (tests)."""
    from jaxalign.ape.report import write_results
    from jaxalign.ape.score import Scorer
    from jaxalign.io.outputs import check_run_dir

    run_dir = check_run_dir(cfg.run_dir or f"runs/ape-{time.strftime('%Y%m%d-%H%M%S')}",
                            "--run-dir" if cfg.run_dir else "run_dir")
    tasks = [load_task(t) for t in cfg.ape.tasks]  # bad task files fail before the model loads
    for t in tasks:
        t.split(cfg.ape.train_size, cfg.ape.heldout_size)
    start = time.perf_counter()
    if tokenizer is None or model is None:
        tokenizer, model = _load(cfg)
    scorer = Scorer(model, tokenizer, batch_size=cfg.ape.batch_size, answer_tokens=cfg.ape.answer_tokens)
    bar = None
    if not cfg.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) * (3 + cfg.ape.resample_rounds), desc="ape", unit="phase", file=sys.stderr)

    def step(msg):
        if bar is not None:
            if bar.n or bar.desc != "ape":
                bar.update(1)
            bar.set_description(msg)

    records = []
    key = jax.random.key(cfg.seed)
    for i, task in enumerate(tasks):
        rng = np.random.default_rng([cfg.seed, i])
        records.append(search_task(scorer, task, cfg.ape, jax.random.fold_in(key, i), rng, step))
    if bar is not None:
        bar.update(bar.total - bar.n)
        bar.close()
    out = {"run_dir": str(run_dir), "wall_s": time.perf_counter() - start, "tasks": records}
    write_results(Path(run_dir), out, dataclasses.asdict(cfg))
    return out


def _load(cfg: ApeRunConfig):
    from jaxalign.algorithms.common import mesh_from, model_from, tokenizer_from
    from jaxalign.config.schema import MeshSpec, RunConfig

    # One device: a 135M model's scoring batches are small, and one device keeps them unsharded.
    run = RunConfig(seed=cfg.seed, model=cfg.model, mesh=MeshSpec(data=1, fsdp=1, tensor=1))
    tokenizer = tokenizer_from(run)
    return tokenizer, model_from(run, mesh_from(run), tokenizer)
