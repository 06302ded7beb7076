"""``jaxalign demo``: align SmolLM2-135M-Instruct toward positive movie-review continuations.

The task of the RAFT and PPO papers' IMDB experiments, at laptop scale: the policy continues the
opening of a movie review (one of ~300 written for jaxalign, shipped as
``shipped:movie_prompts.jsonl``, split 260 train / 40 held-out), and the reward is the VADER
compound sentiment of the continuation, in [-1, 1]. The demo

1. renders every opening with the model's chat template as the beginning of the assistant's
   turn (system "You are a helpful assistant.", user "Continue this movie review.", assistant:
   the opening), so the instruct model continues the review rather than answering a question,
   and writes the rendered prompts to ``RUN_DIR/data/{train,heldout}.jsonl``;
2. samples one completion per held-out prompt from the starting model (fixed key) and scores it;
3. trains with the chosen algorithm (``raft`` by default; ``ppo``, ``online-dpo``, ``grpo``, or
   offline ``dpo`` on pairs it first samples from the starting model and labels with VADER),
   through the same :func:`jaxalign.train.loop.run` as ``jaxalign <algorithm>``;
4. samples the held-out prompts again from the aligned model with the same key, and reports the
   mean reward before / after, the KL to the reference (the starting model) on the aligned
   model's completions, three completions side by side, the plots and the exported model.

Which algorithm runs is only a name -> config mapping (:data:`PLANS`); everything else is shared.
``--tiny`` runs the same code on a tiny random model with the shipped byte tokenizer (seconds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import yaml

from jaxalign.algorithms.registry import section_of
from jaxalign.errors import JaxalignError

PROMPTS_FILE = "movie_prompts.jsonl"
SPLITS = ("train", "heldout")
SYSTEM = "You are a helpful assistant."
INSTRUCTION = "Continue this movie review."
MODEL = "smollm2-135m-instruct"
EVAL_TEMPERATURE = 1.0  # held-out samples: the policy's own distribution (so the KL estimate is KL(π‖π_ref))


# -- the prompt set -----------------------------------------------------------------------------

def normalize_opening(text: str) -> str:
    """Lower case, punctuation (but apostrophes) to spaces, whitespace collapsed: the key under
    which two openings count as duplicates, and what the held-out split is hashed on."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def heldout_rank_key(text: str) -> str:
    """The split rule: the 40 openings with the smallest SHA-256 of :func:`normalize_opening`
    are held out (stable under reordering the file; the ``split`` field records the result)."""
    return hashlib.sha256(normalize_opening(text).encode()).hexdigest()


def movie_prompts(split: str | None = None) -> list[str]:
    """The shipped movie-review openings, in file order: all, or one split (``train`` | ``heldout``)."""
    from jaxalign.data import shipped_path

    if split is not None and split not in SPLITS:
        raise JaxalignError(f"movie prompts: split {split!r} is not one of {SPLITS}")
    rows = [json.loads(line) for line in shipped_path(PROMPTS_FILE).read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if split is None or r["split"] == split]


def render_prompt(tokenizer, opening: str) -> str:
    """``opening`` as the start of the assistant's turn of a chat, in the tokenizer's template
    (the text ends with the opening: the model's continuation follows it directly)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": INSTRUCTION},
                {"role": "assistant", "content": opening}]
    return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)


# -- algorithm name -> config -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """One algorithm's part of the demo: its config section, batch size and learning rate, the
    measured cost of one step on the real model (2 CPU cores; see the README's Demo section),
    and a line describing a step (``{b}``: prompts or pairs per step)."""

    section: dict
    batch_size: int
    lr: float
    seconds_per_step: float
    describe: str
    pairs: bool = False  # offline: sample and VADER-label pairs first
    policy_key: str | None = None  # the policy's subtree when the trained params hold more (PPO's critic)


_SENTIMENT = {"kind": "sentiment"}
PLANS: dict[str, Plan] = {
    # One update per iteration, not RAFT's defaults (2 epochs x 4 minibatches): at this lr those
    # drove VADER to +0.99 with KL 2.0 per token and repetitive text (README, Demo).
    "raft": Plan({"ranking": "local", "alpha": 0.25, "min_length": 4, "epochs": 1, "num_minibatches": 1,
                  "sampling": {"temperature": 0.85}, "reward": _SENTIMENT},
                 batch_size=8, lr=2e-5, seconds_per_step=21.0,
                 describe="{b} prompts x 4 samples, SFT on the best sample of each prompt"),
    "grpo": Plan({"num_generations": 4, "beta": 0.0, "sampling": {"temperature": 1.0}, "reward": _SENTIMENT},
                 batch_size=4, lr=2e-5, seconds_per_step=16.0,
                 describe="{b} prompts x 4 samples, group-normalised advantages"),
    "ppo": Plan({"preset": "ppo_max", "num_generations": 2, "ppo_epochs": 1, "kl_coef": 0.05,
                 "sampling": {"temperature": 1.0}, "reward": _SENTIMENT},
                batch_size=4, lr=1e-5, seconds_per_step=18.0,
                describe="{b} prompts x 2 samples, PPO-max with a critic from the policy", policy_key="policy"),
    "online-dpo": Plan({"beta": 0.1, "sampling": {"temperature": 0.9}, "reward": _SENTIMENT},
                       batch_size=8, lr=1e-5, seconds_per_step=18.0,
                       describe="{b} prompts x 2 samples, the better one chosen"),
    "dpo": Plan({"beta": 0.1, "loss_type": "sigmoid", "reference": "precomputed"},
                batch_size=8, lr=5e-6, seconds_per_step=16.0, pairs=True,
                describe="{b} VADER-labelled pairs sampled from the starting model"),
}


def _importable(name: str) -> bool:
    from jaxalign import algorithms

    try:
        algorithms.get(name).load()
    except (ImportError, KeyError):
        return False
    return True


def default_algorithm() -> str:
    """RAFT when its module is available, else GRPO."""
    return "raft" if _importable("raft") else "grpo"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What differs between the real demo and ``--tiny``."""

    model: dict
    max_new_tokens: int
    max_prompt_length: int
    buckets: object
    overhead_s: float  # load, compile and the two held-out passes (measured, 2 CPU cores)
    pair_prompts: int  # dpo: train prompts turned into pairs
    pair_seconds_per_prompt: float
    tiny_steps: int | None = None
    batch_size: int | None = None  # prompts per step (None: the plan's)
    mesh: dict | None = None


FULL = Sizes({"path": MODEL, "param_dtype": "float32", "dtype": "float32"}, max_new_tokens=32,
             max_prompt_length=48, buckets=[48, 64, 128], overhead_s=120.0, pair_prompts=128,
             pair_seconds_per_prompt=1.0)
TINY = Sizes({"init": "random", "tokenizer": "tiny",
              "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
                         "tie_word_embeddings": True}},
             max_new_tokens=8, max_prompt_length=128, buckets="pow2", overhead_s=0.0, pair_prompts=16,
             pair_seconds_per_prompt=0.0, tiny_steps=3, batch_size=4,
             mesh={"data": 1, "fsdp": 1, "tensor": 1})


def plan_steps(algorithm: str, sizes: Sizes, minutes: float) -> int:
    """Train steps that fit ``minutes`` on 2 CPU cores after the fixed overhead (>= 1)."""
    plan = PLANS[algorithm]
    if sizes.tiny_steps is not None:
        return sizes.tiny_steps
    left = minutes * 60.0 - sizes.overhead_s
    if plan.pairs:
        left -= sizes.pair_prompts * sizes.pair_seconds_per_prompt
    return max(1, int(left // plan.seconds_per_step))


def demo_config(algorithm: str, sizes: Sizes, data_dir: Path, steps: int, seed: int = 0) -> dict:
    """The run config (as a YAML-able dict) of the demo for ``algorithm``."""
    plan = PLANS[algorithm]
    section = json.loads(json.dumps(plan.section))  # a deep copy
    batch = sizes.batch_size or plan.batch_size
    if "sampling" in section:
        section["sampling"]["max_new_tokens"] = sizes.max_new_tokens
    if algorithm == "ppo":
        section["minibatch_size"] = batch * section["num_generations"]
        section["critic_warmup_steps"] = min(3, steps // 4)
    data = {"train": str(data_dir / ("pairs.jsonl" if plan.pairs else "train.jsonl")),
            "max_prompt_length": sizes.max_prompt_length,
            "max_length": sizes.max_prompt_length + sizes.max_new_tokens + 8, "buckets": sizes.buckets}
    raw = {
        "algorithm": algorithm, "seed": seed,
        "model": dict(sizes.model),
        "data": data,
        "optim": {"lr": plan.lr if sizes.tiny_steps is None else 1e-2, "schedule": "constant",
                  "warmup_steps": 0, "grad_clip": 1.0},
        "train": {"steps": steps, "batch_size": batch, "log_every": 1, "eval_every": 0, "save_every": 0,
                  "keep_checkpoints": 1},
        section_of(algorithm): section,
    }
    if sizes.mesh:
        raw["mesh"] = dict(sizes.mesh)
    return raw


# -- running it ---------------------------------------------------------------------------------

def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class _Clock:
    """Wall and process-CPU seconds per phase, and per train step (between experience calls; the
    CPU time is what a loaded machine cannot inflate: on 2 idle cores a step takes between
    CPU/2 and CPU seconds of wall time)."""

    def __init__(self):
        self.t0 = self._w = time.perf_counter()
        self._c = time.process_time()
        self.wall, self.cpu, self.steps = {}, {}, []

    def mark(self, phase: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[phase], self.cpu[phase] = w - self._w, c - self._c
        self._w, self._c = w, c

    def timed(self, fn):
        def wrapped(*a, **k):
            self.steps.append((time.perf_counter(), time.process_time()))
            return fn(*a, **k)
        return wrapped

    def step_medians(self):
        """Median (wall, CPU) seconds of a step, leaving out the first (it compiles)."""
        import numpy as np

        d = np.diff(np.asarray(self.steps), axis=0)[1:]
        return (float(np.median(d[:, 0])), float(np.median(d[:, 1]))) if len(d) else (None, None)


def run_demo(algorithm: str | None = None, *, tiny: bool = False, run_dir: str | Path | None = None,
             minutes: float = 10.0, steps: int | None = None, quiet: bool = False, seed: int = 0) -> dict:
    """Run the demo; return its summary (also written to ``RUN_DIR/demo_summary.json``)."""
    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.examples.demo_report import DemoEval, make_pairs, plot_rewards, save_samples, step_seconds
    from jaxalign.train.loop import run

    clock = _Clock()
    algorithm = algorithm or default_algorithm()
    if algorithm not in PLANS:
        raise JaxalignError(f"demo: --algorithm {algorithm!r} is not one of {', '.join(PLANS)}")
    if not _importable(algorithm):
        raise JaxalignError(f"demo: algorithm {algorithm!r} is not available in this install")
    sizes = TINY if tiny else FULL
    if steps is not None and steps <= 0:
        raise JaxalignError(f"demo: --steps must be > 0, got {steps}")
    if minutes <= 0:
        raise JaxalignError(f"demo: --minutes must be > 0, got {minutes}")
    n_steps = steps or plan_steps(algorithm, sizes, minutes)
    from jaxalign.io.outputs import check_run_dir

    run_dir = check_run_dir(run_dir or f"runs/demo-{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}", "--run-dir")
    if (run_dir / "checkpoints").exists() or (run_dir / "demo_summary.json").exists():
        raise JaxalignError(f"demo: {run_dir} already holds a run; give a new --run-dir")
    data_dir = run_dir / "data"
    raw = demo_config(algorithm, sizes, data_dir.resolve(), n_steps, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "demo_config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(cfg_path)  # validated before anything is loaded; its data files follow
    cfg.quiet, cfg.run_dir = quiet, str(run_dir)

    from jaxalign.algorithms import common

    plan = PLANS[algorithm]
    describe = plan.describe.format(b=cfg.train.batch_size)
    _say(quiet, f"demo: {algorithm} on {'a tiny random model' if tiny else MODEL}, {n_steps} steps "
                f"({describe}); run dir {run_dir}")
    tok = common.tokenizer_from(cfg)
    openings = {s: movie_prompts(s) for s in SPLITS}
    for split in SPLITS:
        _write_jsonl(data_dir / f"{split}.jsonl",
                     [{"prompt": render_prompt(tok, o), "opening": o} for o in openings[split]])
    mesh = common.mesh_from(cfg)
    start = common.model_from(cfg, mesh, tok)  # the reference: the policy's starting weights
    evaluator = DemoEval(cfg, start, tok, mesh, data_dir / "heldout.jsonl", openings["heldout"],
                         max_new_tokens=sizes.max_new_tokens, temperature=EVAL_TEMPERATURE, seed=seed)
    del start
    clock.mark("setup")
    _say(quiet, f"demo: sampling the {len(openings['heldout'])} held-out prompts from the starting model")
    before = evaluator.run(evaluator.ref_params, kl=False)  # the policy is the reference: KL 0
    clock.mark("eval_before")
    pair_stats = None
    if plan.pairs:
        _say(quiet, f"demo: dpo: sampling 2 completions for each of {sizes.pair_prompts} train prompts from "
                    "the starting model and labelling them with VADER")
        pair_stats = make_pairs(evaluator, data_dir / "train.jsonl", data_dir / "pairs.jsonl",
                                sizes.pair_prompts, seed)
        clock.mark("pairs")
        _say(quiet, f"demo: dpo: {pair_stats['pairs']} pairs ({pair_stats['ties']} ties dropped)")
    job = algorithms.build_job(cfg)
    clock.mark("build_job")
    # The loop's final eval is the "after" pass.
    evaluate = evaluator if plan.policy_key is None else (lambda params: evaluator(params[plan.policy_key]))
    job = dataclasses.replace(job, evaluate=evaluate)
    if job.experience is not None:  # time each step (wall and CPU) from one experience call to the next
        job = dataclasses.replace(job, experience=clock.timed(job.experience))
    out = run(cfg, job, run_dir)
    clock.mark("train")  # the steps, the final held-out pass, checkpoint, export, plots
    if out["stopped"]:
        raise JaxalignError(f"demo: stopped by a signal; the checkpoint is in {run_dir / 'checkpoints'}")
    after = evaluator.last  # run() evaluated the final params
    plots = [p for p in (run_dir / "plots" / "training.png",) if p.exists()]
    rplot = plot_rewards(before, after, run_dir / "plots" / "demo_rewards.png")
    if rplot is not None:
        plots.append(rplot)
    samples = save_samples(before, after, run_dir / "heldout_samples.npz")
    wall_step, cpu_step = clock.step_medians()
    summary = {
        "algorithm": algorithm, "model": "tiny random" if tiny else MODEL, "steps": out["steps"],
        "describe": describe, "prompts_per_step": cfg.train.batch_size,
        "max_new_tokens": sizes.max_new_tokens, "eval_temperature": EVAL_TEMPERATURE,
        "heldout_prompts": len(openings["heldout"]),
        "reward_before": before.reward, "reward_after": after.reward,
        "kl_per_token": after.kl_per_token, "kl_per_completion": after.kl_per_completion,
        "response_length_before": before.response_length, "response_length_after": after.response_length,
        "train_seconds": clock.wall["train"], "seconds_per_step": clock.wall["train"] / max(out["steps"], 1),
        "step_seconds_steady": wall_step if wall_step is not None else step_seconds(run_dir / "metrics.jsonl"),
        "step_cpu_seconds_steady": cpu_step, "phase_seconds": clock.wall, "phase_cpu_seconds": clock.cpu,
        "wall_seconds": time.perf_counter() - clock.t0, "pairs": pair_stats, "samples": str(samples),
        "run_dir": str(run_dir), "final": str(run_dir / "final"), "plots": [str(p) for p in plots],
        "config": str(cfg_path),
        "examples": [{"opening": o, "before": b, "after": a, "reward_before": rb, "reward_after": ra}
                     for o, b, a, rb, ra in zip(openings["heldout"], before.completions, after.completions,
                                                before.rewards, after.rewards)],
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
