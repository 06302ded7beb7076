"""The measuring and reporting half of ``jaxalign demo``: held-out evaluation (reward and KL to
the reference), the VADER-labelled pairs for offline DPO, the reward plot and the printed summary."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign.errors import JaxalignError

# The evaluation's sampling key is fixed (and different from the training keys), so "before" and
# "after" draw with the same random numbers.
_EVAL_SALT = 0xDE70


@dataclasses.dataclass
class EvalResult:
    """One pass over the held-out prompts: a completion per prompt, its reward, and the KL terms."""

    completions: list[str]
    rewards: list[float]
    lengths: list[int]
    reward: float
    response_length: float
    kl_per_token: float
    kl_per_completion: float
    arrays: dict = dataclasses.field(default_factory=dict, repr=False)  # tokens and masks of the samples


class DemoEval:
    """Held-out evaluation of the demo, against a fixed reference (the starting model).

    ``run(params)`` samples one completion per held-out prompt (temperature ``temperature``, a
    fixed key), scores it with the run's VADER reward, and estimates the KL to the reference on
    those samples: ``mean over completion tokens of log π(y_t) − log π_ref(y_t)``, both from the
    same jitted training forward at the sampling temperature (per completion: the sum over its
    tokens, averaged over completions). Calling the object (the loop's ``evaluate`` hook) runs
    it, keeps the result in ``last`` and returns the metrics logged as ``eval/*``.
    """

    def __init__(self, cfg, start_model, tokenizer, mesh, heldout_file: Path, openings: list[str], *,
                 max_new_tokens: int, temperature: float, seed: int = 0):
        from jaxalign.algorithms.experience import ExperienceMaker, SamplingConfig, make_logps_fn
        from jaxalign.data import collate
        from jaxalign.rewards import RewardConfig, build_reward

        self.cfg, self.tokenizer, self.mesh, self.openings = cfg, tokenizer, mesh, openings
        self.graphdef, self.ref_params = nnx.split(start_model)
        self.reward = build_reward(RewardConfig(kind="sentiment"), tokenizer, mesh)
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        self.maker = ExperienceMaker(self.graphdef, tokenizer, self.reward, self.sampling, num_samples=1, mesh=mesh)
        self.logps = make_logps_fn(self.graphdef, temperature)
        self.key = jax.random.fold_in(jax.random.key(seed), _EVAL_SALT)
        self.seed = seed
        examples = self._prompts(heldout_file)
        if len(examples) != len(openings):
            raise JaxalignError(f"{heldout_file}: {len(examples)} prompts for {len(openings)} openings")
        # One batch: one compiled sampler for every held-out pass.
        self.batch = collate(examples, tokenizer.pad_token_id, buckets=cfg.data.buckets,
                             max_length=cfg.data.max_length)
        self.last: EvalResult | None = None

    def _prompts(self, path: Path) -> list[dict]:
        from jaxalign.data import prepare_dataset

        d = self.cfg.data
        tokenized, _ = prepare_dataset(path, self.tokenizer, fmt="prompt_only", max_length=d.max_length,
                                       max_prompt_length=d.max_prompt_length, prompt_overflow=d.prompt_overflow)
        return tokenized

    def sample(self, params, batch: dict, key, maker=None):
        """``(rollout, completions, rewards)`` for a prompt batch."""
        maker = maker or self.maker
        roll = maker.sample(params, batch["prompt_ids"], batch["prompt_mask"], key)
        prompts, comps = maker.decode(roll)
        scores = self.reward(prompts, comps, tokens=roll.tokens, attention_mask=roll.attention_mask,
                             finished=np.asarray(roll.finished))
        return roll, comps, scores

    def run(self, params, kl: bool = True) -> EvalResult:
        """Sample, score and (``kl``) measure the KL of ``params`` on the held-out prompts."""
        roll, comps, scores = self.sample(params, self.batch, self.key)
        mask = np.asarray(roll.completion_mask, np.float64)
        diff = np.zeros_like(mask)
        if kl:
            lp = np.asarray(self.logps(params, roll.tokens, roll.attention_mask), np.float64)
            lr = np.asarray(self.logps(self.ref_params, roll.tokens, roll.attention_mask), np.float64)
            diff = (lp - lr) * mask
        lengths = np.asarray(roll.lengths)
        return EvalResult(
            completions=list(comps), rewards=[float(s) for s in scores], lengths=[int(n) for n in lengths],
            reward=float(np.mean(scores)), response_length=float(lengths.mean()),
            kl_per_token=float(diff.sum() / max(mask.sum(), 1.0)), kl_per_completion=float(diff.sum(-1).mean()),
            arrays={"tokens": np.asarray(roll.tokens), "attention_mask": np.asarray(roll.attention_mask),
                    "completion_mask": np.asarray(roll.completion_mask)})

    def __call__(self, params) -> dict:
        self.last = self.run(params)
        r = self.last
        return {"reward": r.reward, "kl": r.kl_per_token, "kl_per_completion": r.kl_per_completion,
                "response_length": r.response_length}


def make_pairs(ev: DemoEval, train_file: Path, out_file: Path, n_prompts: int, seed: int = 0,
               batch_prompts: int = 32) -> dict:
    """Offline DPO data from the starting model: for each of the first ``n_prompts`` train prompts,
    two completions (temperature 1) scored by VADER; the higher one is ``chosen``. Pairs with
    equal scores (often both 0: no sentiment words) or an empty completion carry no preference
    and are dropped. Writes ``{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}``
    rows to ``out_file``; returns counts."""
    from jaxalign.algorithms.experience import ExperienceMaker
    from jaxalign.algorithms.online_dpo import pair_rows
    from jaxalign.data import full_batches

    rows = [json.loads(line) for line in Path(train_file).read_text().splitlines()][:n_prompts]
    examples = ev._prompts(train_file)[:n_prompts]
    maker = ExperienceMaker(ev.graphdef, ev.tokenizer, ev.reward, ev.sampling, num_samples=2, mesh=ev.mesh)
    width = max(len(e["prompt_ids"]) for e in examples)
    key = jax.random.fold_in(jax.random.key(seed), _EVAL_SALT + 1)
    out, ties, empty = [], 0, 0
    bp = min(batch_prompts, len(examples))
    # Full batches: one compiled sampler.
    for i, batch, n in full_batches(examples, bp, ev.tokenizer.pad_token_id, length=width):
        _, comps, scores = ev.sample(ev.ref_params, batch, jax.random.fold_in(key, i), maker=maker)
        chosen, rejected = pair_rows(np.asarray(scores))
        for j in range(n):
            (a, b), (sa, sb) = comps[2 * j:2 * j + 2], scores[2 * j:2 * j + 2]
            if not a.strip() or not b.strip() or a == b:
                empty += 1
            elif sa == sb:
                ties += 1
            else:
                c, r = chosen[j], rejected[j]
                out.append({"prompt": rows[i + j]["prompt"], "chosen": comps[c], "rejected": comps[r],
                            "score_chosen": float(scores[c]), "score_rejected": float(scores[r])})
    batch_size = ev.cfg.train.batch_size
    if len(out) < batch_size:
        raise JaxalignError(f"demo: dpo: only {len(out)} of {len(examples)} sampled pairs differ in VADER score "
                            f"(fewer than train.batch_size={batch_size})")
    out_file.write_text("".join(json.dumps(r) + "\n" for r in out))
    return {"prompts": len(examples), "pairs": len(out), "ties": ties, "empty_or_identical": empty,
            "file": str(out_file)}


def save_samples(before: EvalResult, after: EvalResult, path: Path) -> Path:
    """The held-out samples' token arrays (``before_*`` / ``after_*``) and rewards as one ``.npz``."""
    arrays = {f"{tag}_{k}": v for tag, r in (("before", before), ("after", after)) for k, v in r.arrays.items()}
    arrays.update(before_rewards=np.asarray(before.rewards, np.float32),
                  after_rewards=np.asarray(after.rewards, np.float32))
    np.savez_compressed(path, **arrays)
    return path


def step_seconds(metrics_file: Path) -> float | None:
    """Median ``step_time`` of the logged steps after the first (which includes compilation)."""
    from jaxalign.train.metrics import read_metrics

    times = [r["step_time"] for r in read_metrics(metrics_file) if "step_time" in r and r["step"] > 1]
    return float(np.median(times)) if times else None


def plot_rewards(before: EvalResult, after: EvalResult, path: Path) -> Path | None:
    """Histogram of the held-out rewards before and after (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(-1, 1, 21)
    ax.hist(before.rewards, bins=bins, alpha=0.6, label=f"before (mean {before.reward:+.3f})")
    ax.hist(after.rewards, bins=bins, alpha=0.6, label=f"after (mean {after.reward:+.3f})")
    ax.set_xlabel("VADER compound score of the held-out completion")
    ax.set_ylabel("completions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _per_step(s: dict) -> str:
    steady, cpu = s.get("step_seconds_steady"), s.get("step_cpu_seconds_steady")
    if steady is None:
        return f"{s['seconds_per_step']:.1f} s/step"
    return f"{steady:.1f} s/step after the first" + (f", {cpu:.1f} CPU-s" if cpu is not None else "")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(empty)"


def side_by_side(left: str, right: str, width: int = 44) -> list[str]:
    """Two texts wrapped into two columns of ``width`` characters."""
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    n = max(len(a), len(b))
    a, b = a + [""] * (n - len(a)), b + [""] * (n - len(b))
    return [f"  {x:<{width}} | {y}" for x, y in zip(a, b)]


def format_summary(s: dict, n_examples: int = 3) -> str:
    """The text ``jaxalign demo`` prints at the end (from the summary :func:`run_demo` returns)."""
    lines = [
        f"== jaxalign demo: {s['algorithm']} on {s['model']}: {s['steps']} steps ({s['describe']}), "
        f"{s['train_seconds'] / 60:.1f} min training ({_per_step(s)}), "
        f"{s['wall_seconds'] / 60:.1f} min in all ==",
        f"held-out reward (VADER compound in [-1, 1]; mean over {s['heldout_prompts']} held-out prompts, one "
        f"sample each at temperature {s['eval_temperature']}, up to {s['max_new_tokens']} tokens):",
        f"  before: {s['reward_before']:+.4f}",
        f"  after:  {s['reward_after']:+.4f}  (change {s['reward_after'] - s['reward_before']:+.4f})",
        f"KL to the reference (the starting model), on the aligned model's held-out completions:",
        f"  {s['kl_per_token']:.4f} per token (mean of log p - log p_ref), {s['kl_per_completion']:.3f} per completion",
        f"response length (tokens): {s['response_length_before']:.1f} before, {s['response_length_after']:.1f} after",
    ]
    if s.get("pairs"):
        p = s["pairs"]
        lines.append(f"dpo pairs: {p['pairs']} of {p['prompts']} train prompts ({p['ties']} VADER ties and "
                     f"{p['empty_or_identical']} empty/identical pairs dropped): {p['file']}")
    lines.append(f"{n_examples} held-out completions, before | after (the first {n_examples} held-out "
                 "prompts, not selected):")
    for i, ex in enumerate(s["examples"][:n_examples]):
        lines.append(f"[{i + 1}] {ex['opening']} ...")
        lines += side_by_side(f"before ({ex['reward_before']:+.2f}): {_one_line(ex['before'])}",
                              f"after ({ex['reward_after']:+.2f}): {_one_line(ex['after'])}")
    lines += [
        f"aligned model (Hugging Face format): {s['final']}",
        f"plots: {', '.join(s['plots']) or '(matplotlib not installed)'}",
        f"metrics: {Path(s['run_dir']) / 'metrics.jsonl'}; summary: {Path(s['run_dir']) / 'demo_summary.json'}; "
        f"held-out samples: {s['samples']}",
        f"rerun the training alone: jaxalign {s['algorithm']} --config {s['config']} --run-dir NEW_DIR",
    ]
    return "\n".join(lines)
