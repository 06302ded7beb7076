"""The stages of ``benchmarks/alignment_table.py``: shared set-up (SFT, reward model, the
reference's held-out samples) and one algorithm's budgeted run + held-out evaluation.

Everything task-specific comes from :mod:`jaxalign.demo` / :mod:`jaxalign.examples.demo_report` (the
movie-review prompts and their 260/40 split, the chat rendering, the VADER reward, the held-out
evaluator with its KL to a reference, the per-algorithm configs in ``PLANS``); every training
run is an algorithm's own ``build_job`` driven by :func:`jaxalign.train.loop.run`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import yaml

from jaxalign.algorithms.registry import section_of
from jaxalign.examples import demo

# Table rows -> (jaxalign algorithm, what differs from the demo's plan).
ALGORITHMS = {
    "ppo-max": "ppo", "ppo-vanilla": "ppo", "raft": "raft", "dpo": "dpo",
    "online-dpo": "online-dpo", "grpo": "grpo", "ift": "ift",
}
OFFLINE_PROMPTS = {"full": 128, "quick": 8}  # DPO pairs / IFT demonstrations: train prompts x 2 samples
_SALT_SFT, _SALT_RM, _SALT_RM_EVAL, _SALT_IFT = 101, 102, 103, 104


# -- small helpers ------------------------------------------------------------------------------

def load_avg() -> list[float]:
    """The 1/5/15-minute load averages (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]


class Clock:
    """Wall seconds and this process's CPU seconds (user + system, all threads) since creation."""

    def __init__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.w0

    def cpu(self) -> float:
        return time.process_time() - self.c0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sizes_for(quick: bool) -> demo.Sizes:
    return demo.TINY if quick else demo.FULL


def trim_to_sentence(text: str) -> str | None:
    """``text`` cut after its last sentence end (``.``, ``!``, ``?``, closing quotes kept), or
    None when it has none or fewer than 4 words remain (a demonstration should be whole text)."""
    ends = list(re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text))
    if not ends:
        return None
    cut = text[:ends[-1].end()]
    return cut if len(cut.split()) >= 4 else None


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (collapse lowers it)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- configs ------------------------------------------------------------------------------------

def _model_section(sizes: demo.Sizes, path: Path | None) -> dict:
    if path is None:  # the base model (the demo's: SmolLM2, or the tiny random one)
        return dict(sizes.model)
    return {"path": str(path), "param_dtype": "float32", "dtype": "float32"}


def _common(algorithm: str, sizes: demo.Sizes, model: dict, train_file: Path, *, steps: int, batch: int,
            lr: float, seed: int, quick: bool) -> dict:
    raw = {"algorithm": algorithm, "seed": seed, "model": model,
           "data": {"train": str(train_file), "max_prompt_length": sizes.max_prompt_length,
                    "max_length": sizes.max_prompt_length + sizes.max_new_tokens + 8, "buckets": sizes.buckets},
           "optim": {"lr": lr if not quick else 1e-3, "schedule": "constant", "warmup_steps": 0,
                     "grad_clip": 1.0},
           "train": {"steps": steps, "batch_size": batch, "log_every": 1, "eval_every": 0, "save_every": 0,
                     "keep_checkpoints": 1, "save_final": False, "plots": False}}
    if sizes.mesh:
        raw["mesh"] = dict(sizes.mesh)
    return raw


def algorithm_config(row: str, sizes: demo.Sizes, work: Path, *, steps: int, seed: int, quick: bool) -> dict:
    """The run config of table row ``row``: the demo's plan for its algorithm, started from the
    SFT policy, with the reward model as the reward (online) or on RM-labelled data (offline)."""
    alg = ALGORITHMS[row]
    sft, rm, data = work / "sft" / "final", {"kind": "model", "path": str(work / "rm" / "final")}, work / "data"
    if alg == "ift":
        raw = _common("ift", sizes, _model_section(sizes, sft), data / "ift.jsonl", steps=steps,
                      batch=sizes.batch_size or 8, lr=2e-5, seed=seed, quick=quick)
        raw["ift"] = {"lam": 0.2, "gamma": 0.95}
        return raw
    raw = demo.demo_config(alg, sizes, data, steps, seed)  # the demo's plan: batch, lr, sampling, ...
    raw["model"] = _model_section(sizes, sft)
    raw["train"].update(save_final=False, plots=False, keep_checkpoints=1)
    raw["optim"]["lr"] = demo.PLANS[alg].lr if not quick else 1e-3
    section = raw[section_of(alg)]
    if "reward" in section:
        section["reward"] = dict(rm)
    if alg == "ppo":
        section["preset"] = "ppo_max" if row == "ppo-max" else "vanilla"
        # PPO-max's critic warm-up: 2 iterations (the demo's 3 is a large share of this budget).
        section["critic_warmup_steps"] = min(2, steps // 4) if row == "ppo-max" else 0
    return raw


def stage_config(kind: str, sizes: demo.Sizes, work: Path, *, steps: int, seed: int, quick: bool) -> dict:
    """SFT (from the base model, on ``data/sft.jsonl``) or the reward model (from the SFT
    policy, on ``data/rm_pairs.jsonl``)."""
    data = work / "data"
    if kind == "sft":
        raw = _common("sft", sizes, _model_section(sizes, None), data / "sft.jsonl", steps=steps,
                      batch=sizes.batch_size or 8, lr=2e-5, seed=seed, quick=quick)
        raw["sft"] = {}
        raw["train"]["micro_batch_size"] = (sizes.batch_size or 8) // 2
    else:
        raw = _common("rm", sizes, _model_section(sizes, work / "sft" / "final"), data / "rm_pairs.jsonl",
                      steps=steps, batch=sizes.batch_size or 16, lr=5e-5, seed=seed, quick=quick)
        raw["rm"] = {"loss": "pairwise", "center_coef": 0.01}
        raw["train"]["micro_batch_size"] = (sizes.batch_size or 16) // 4  # bounds the activations' memory
    raw["train"]["save_final"] = True  # the next stages start from final/
    return raw


def load(raw: dict, path: Path):
    """Write ``raw`` to ``path`` and load it as a validated :class:`RunConfig`."""
    from jaxalign.config import load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


# -- sampling -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Group:
    """``n`` sampled completions of one prompt: texts, and the token arrays a reward model reads."""

    prompt: str
    completions: list[str]
    tokens: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray


def sample_groups(ev, params, prompt_file: Path, n: int, key, limit: int | None = None,
                  batch_prompts: int = 32) -> list[Group]:
    """``n`` completions (the evaluator's sampling settings) for each prompt of ``prompt_file``
    (the first ``limit``), in full batches of ``batch_prompts`` prompts (one compiled sampler)."""
    import jax

    from jaxalign.algorithms.experience import ExperienceMaker
    from jaxalign.data import full_batches

    rows = [json.loads(x) for x in prompt_file.read_text().splitlines()][:limit]
    examples = ev._prompts(prompt_file)[:limit]
    maker = ExperienceMaker(ev.graphdef, ev.tokenizer, ev.reward, ev.sampling, num_samples=n, mesh=ev.mesh)
    width = ev.batch["prompt_ids"].shape[1]  # the held-out batch's width: one sampler shape per n
    width = max(width, max(len(e["prompt_ids"]) for e in examples))
    bp = min(batch_prompts, len(examples))
    out = []
    for i, batch, m in full_batches(examples, bp, ev.tokenizer.pad_token_id, length=width):
        roll = maker.sample(params, batch["prompt_ids"], batch["prompt_mask"], jax.random.fold_in(key, i))
        _, comps = maker.decode(roll)
        tokens, mask = np.asarray(roll.tokens), np.asarray(roll.attention_mask)
        lengths = np.asarray(roll.lengths)
        for j in range(m):
            r = slice(j * n, (j + 1) * n)
            out.append(Group(rows[i + j]["prompt"], comps[r], tokens[r], mask[r], lengths[r]))
    return out


def rm_scores(rm, groups: list[Group]) -> list[np.ndarray]:
    """The reward model's score of every completion (on the sampled tokens, as the RL runs use it)."""
    return [np.asarray(rm(None, None, tokens=g.tokens, attention_mask=g.attention_mask)) for g in groups]


def vader_scores(groups: list[Group]) -> list[np.ndarray]:
    from jaxalign.rewards import sentiment_reward

    return [sentiment_reward([], g.completions) for g in groups]


def best_demos(groups: list[Group], scores: list[np.ndarray], *, min_score: float | None,
               need_sentence: bool) -> list[dict]:
    """One ``{prompt, completion}`` per prompt: its best-scored completion, cut after its last
    sentence (:func:`trim_to_sentence`); prompts whose best score is not above ``min_score``, or
    (``need_sentence``) whose best completion has no sentence end, give none."""
    out = []
    for g, s in zip(groups, scores):
        b = int(np.argmax(s))
        if min_score is not None and not s[b] > min_score:
            continue
        text = trim_to_sentence(g.completions[b])
        if text is None:
            if need_sentence:
                continue
            text = g.completions[b]
        if text.strip():
            out.append({"prompt": g.prompt, "completion": text, "score": float(s[b])})
    return out


def pairs_from(groups: list[Group], scores: list[np.ndarray], *, allow_ties: bool) -> tuple[list[dict], dict]:
    """Preference pairs from consecutive samples (1-2, 3-4, ...) of each prompt: the higher score
    is chosen; equal scores (``allow_ties``: kept in sample order) and empty or identical
    completions are dropped. Also returns the rows' indices for scoring pairs on tokens."""
    from jaxalign.algorithms.online_dpo import pair_rows

    rows, index, ties, empty = [], [], 0, 0
    for gi, (g, s) in enumerate(zip(groups, scores)):
        s = np.asarray(s)
        chosen, rejected = pair_rows(s[:len(g.completions) // 2 * 2])
        for a in range(0, len(g.completions) - 1, 2):
            b = a + 1
            ca, cb = g.completions[a], g.completions[b]
            if not ca.strip() or not cb.strip() or ca == cb:
                empty += 1
                continue
            if s[a] == s[b] and not allow_ties:
                ties += 1
                continue
            w, l = int(chosen[a // 2]), int(rejected[a // 2])
            rows.append({"prompt": g.prompt, "chosen": g.completions[w], "rejected": g.completions[l],
                         "score_chosen": float(s[w]), "score_rejected": float(s[l])})
            index.append((gi, w, l))
    return rows, {"pairs": len(rows), "ties_dropped": ties, "empty_or_identical": empty, "index": index}


# -- evaluation ---------------------------------------------------------------------------------

def evaluate(ev, params, rm, ref: dict, *, kl: bool = True) -> dict:
    """Held-out metrics of ``params``: one completion per held-out prompt (the demo's evaluator:
    temperature 1, fixed key), scored by VADER (gold) and the reward model (proxy); KL per token
    to the reference (the SFT policy) on those samples; mean length; perplexity of the policy on
    the reference's own held-out completions ``ref`` (fixed text: how far the model moved from
    the reference's distribution); distinct-2 of the completions."""
    res = ev.run(params, kl=kl)
    arr = res.arrays
    proxy = np.asarray(rm(None, None, tokens=arr["tokens"], attention_mask=arr["attention_mask"]))
    lp = np.asarray(ev.logps(params, ref["tokens"], ref["attention_mask"]), np.float64)
    cm = ref["completion_mask"].astype(np.float64)
    nll = -(lp * cm).sum() / max(cm.sum(), 1.0)
    return {"gold_reward": res.reward, "proxy_reward": float(proxy.mean()), "kl_per_token": res.kl_per_token,
            "kl_per_completion": res.kl_per_completion, "response_length": res.response_length,
            "perplexity": float(math.exp(nll)), "distinct_2": distinct_n(res.completions),
            "gold_rewards": res.rewards, "proxy_rewards": [float(x) for x in proxy],
            "completions": res.completions, "arrays": arr}


def make_evaluator(cfg, work: Path, quick: bool, seed: int, start_model, tok, mesh):
    from jaxalign.examples.demo_report import DemoEval

    sizes = sizes_for(quick)
    return DemoEval(cfg, start_model, tok, mesh, work / "data" / "heldout.jsonl", demo.movie_prompts("heldout"),
                    max_new_tokens=sizes.max_new_tokens, temperature=demo.EVAL_TEMPERATURE, seed=seed)


def strip_arrays(ev_result: dict) -> dict:
    return {k: v for k, v in ev_result.items() if k != "arrays"}


# -- the budget ---------------------------------------------------------------------------------

class Budget:
    """Stops a :func:`jaxalign.train.loop.run` once its compute budget is spent.

    ``limit_s`` is counted on ``clock`` (``cpu``: this process's CPU seconds, which other jobs on
    a shared machine cannot inflate; ``wall``: wall seconds), from the budget's creation;
    ``wall_cap_s`` bounds wall time in either case. Before each step, if the step after it would
    end past a limit (time used + 2 typical steps), this step is made the last: the hook sends
    this process SIGTERM, which the loop turns into "finish this step, checkpoint, stop" (its
    documented signal path), so the loop's own step code is what runs to the end. A run so ends
    within about one step below its limit.
    """

    def __init__(self, limit_s: float | None, clock: str = "cpu", wall_cap_s: float | None = None):
        self.limit_s, self.clock, self.wall_cap_s = limit_s, clock, wall_cap_s
        self.t = Clock()
        self.starts: list[tuple[float, float]] = []
        self.ended_by: str | None = None

    def used(self) -> tuple[float, float]:
        return self.t.cpu(), self.t.wall()

    def _check(self) -> None:
        cpu, wall = self.used()
        self.starts.append((cpu, wall))
        if self.ended_by is not None or self.limit_s is None or len(self.starts) < 2:
            return
        # The typical step: the median of the steps after the first (which compiles); until one
        # is measured (step 0), stop only once a limit is already passed.
        d = np.diff(np.asarray(self.starts), axis=0)[1:]
        c_step, w_step = np.median(d, axis=0) if len(d) else (0.0, 0.0)
        used, step = (cpu, c_step) if self.clock == "cpu" else (wall, w_step)
        if used + 2 * step > self.limit_s:
            self.ended_by = self.clock
        elif self.wall_cap_s is not None and wall + 2 * w_step > self.wall_cap_s:
            self.ended_by = "wall cap"
        if self.ended_by is not None:
            signal.raise_signal(signal.SIGTERM)

    def wrap(self, experience):
        """The job's ``experience`` hook (or an identity one for offline jobs) with the check."""

        def hook(state, batch):
            self._check()
            return experience(state, batch) if experience is not None else (batch, {})

        return hook


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
