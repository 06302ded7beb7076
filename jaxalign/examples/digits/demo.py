"""``python -m jaxalign.examples.digits`` (``make demo-digits``): RAFT with a magic prompt on the
digits diffusion model, and its report.

1. splits scikit-learn's digits in two halves; fits the reward classifier on one;
2. pre-trains the class-conditional diffusion model on the other (label dropout for guidance);
3. measures the prompt-alignment reward (P(prompted digit) × a realism gate) and the realism
   rate on held-out seeds, unguided (guidance 1) and guided (``--guidance``, the magic prompt);
4. runs RAFT: candidates drawn *with* guidance (from the frozen pre-trained model, or with
   ``--proposal current`` from the model being fine-tuned), best of K per digit prompt
   (``--ranking local``) or the top α of the batch (``global``), the plain conditional model
   fine-tuned on them;
5. measures the reward again and writes ``OUT/report.json``, ``OUT/report.md`` (the table) and
   ``OUT/samples.png`` (a grid of samples per digit: unguided before, guided before, unguided
   after, same seeds).

``--tiny`` runs the same code with tiny settings (what CI runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxalign.examples.digits import data, pipeline
from jaxalign.examples.digits.reward import DigitReward, Realism
from jaxalign.errors import JaxalignError

ROWS = (("unguided, before RAFT", "before", 1), ("guided (magic prompt), before RAFT", "before", "g"),
        ("unguided, after RAFT", "after", 1), ("guided, after RAFT", "after", "g"))


def run(s: pipeline.Settings, out: Path, log=print) -> dict:
    """The whole demo with settings ``s``; writes into ``out`` and returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    halves = data.load_halves(s.seed)
    reward = DigitReward(*halves["reward"], steps=s.reward_steps, seed=s.seed)
    acc = reward.accuracy(*halves["generator"])
    log(f"reward classifier: fitted on {len(halves['reward'][1])} digits; accuracy on the generator's "
        f"{len(halves['generator'][1])}: {acc:.3f}")
    realism = Realism(halves["reward"][0])
    gen = pipeline.Generator(s)
    state, losses = pipeline.pretrain(gen, *halves["generator"])
    log(f"pre-trained {s.pretrain_steps} steps, denoising loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    t_pre = time.perf_counter() - t0
    ev = lambda params, g: pipeline.evaluate(gen, params, reward, g, realism.realistic)
    evals = {("before", 1): ev(state.params, 1.0), ("before", "g"): ev(state.params, s.guidance)}
    log(f"before: unguided {_fmt(evals['before', 1])}, guided ×{s.guidance:g} {_fmt(evals['before', 'g'])}")
    t1 = time.perf_counter()
    state, history = pipeline.raft(
        gen, state.params, reward, filter_fn=realism.filter_fn if s.realism_filter else None,
        log=lambda i, m: log(f"RAFT {i + 1}/{s.iterations}: candidates {m['reward/all_mean']:.3f}, kept "
                             f"{m['reward/kept_mean']:.3f}, filtered {m['filtered_fraction']:.2f}, loss {m['loss']:.3f}"))
    t_raft = time.perf_counter() - t1
    evals["after", 1], evals["after", "g"] = ev(state.params, 1.0), ev(state.params, s.guidance)
    report = {
        "settings": dataclasses.asdict(s), "classifier_accuracy": acc, "pretrain_losses": losses,
        "rows": [{"name": name, **{f: evals[k][f] for f in ("mean", "se", "per_seed", "per_digit", "realistic", "realistic_se",
                                                          "realistic_per_seed")}}
                 for name, *k in ROWS for k in [tuple(k)]],
        "raft": [{k: m[k] for k in ("reward/all_mean", "reward/kept_mean", "filtered_fraction", "loss")}
                 for m in history],
        "seconds": {"pretrain": t_pre, "raft": t_raft, "total": time.perf_counter() - t0},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(table(report))
    write_grid(out / "samples.png", [evals["before", 1]["samples"], evals["before", "g"]["samples"],
                                     evals["after", 1]["samples"]],
               ["unguided, before", f"guided ×{s.guidance:g}, before", "unguided, after RAFT"])
    log(table(report))
    log(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'samples.png'}")
    return report


def _fmt(e: dict) -> str:
    return f"{e['mean']:.3f} ± {e['se']:.3f}"


def table(report: dict) -> str:
    """The Markdown table of the report: mean reward ± standard error over held-out seeds."""
    s = report["settings"]
    lines = [f"Prompt-alignment reward P(prompted digit), mean ± s.e. over {s['eval_seeds']} held-out seeds "
             f"× {s['eval_per_digit']} samples per digit; RAFT {s['ranking']} ranking, α = {s['alpha']}, "
             f"candidates drawn with guidance {s['guidance']:g} from the {s['proposal']} model, {s['iterations']} "
             f"iterations, fine-tuning lr {s['raft_lr']:g}"
             f"{', realism filter on' if s['realism_filter'] else ''}. 'realistic': the fraction of the samples "
             "within the real digits' 99% PCA reconstruction error (the reward's gate reads the PCA coordinates, "
             "not this residual), ± s.e. over the seeds.", "",
             "| model | reward | realistic | " + " | ".join(str(d) for d in range(data.NUM_CLASSES)) + " |",
             "|---|---|---|" + "---|" * data.NUM_CLASSES]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['mean']:.3f} ± {r['se']:.3f} | {r['realistic']:.2f} ± {r['realistic_se']:.2f} | "
                     + " | ".join(f"{v:.2f}" for v in r["per_digit"]) + " |")
    return "\n".join(lines) + "\n"


def write_grid(path: Path, panels: list, titles: list[str], columns: int = 8) -> None:
    """One panel per model: a row per digit, ``columns`` samples each (``[10, n, 64]`` in [-1, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.2))
    for ax, panel, title in zip(np.atleast_1d(axes), panels, titles):
        n = min(columns, panel.shape[1])
        img = data.to_pixels(panel[:, :n]).reshape(data.NUM_CLASSES, n, 8, 8)
        img = np.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0)
        ax.imshow(img.transpose(0, 2, 1, 3).reshape(data.NUM_CLASSES * 10, n * 10), cmap="gray_r",
                  vmin=0, vmax=data.MAX_INTENSITY)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks(np.arange(data.NUM_CLASSES) * 10 + 4.5, [str(d) for d in range(data.NUM_CLASSES)])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxalign.examples.digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/digits", help="output directory (default runs/digits)")
    p.add_argument("--tiny", action="store_true", help="tiny settings: the same code in seconds (CI)")
    p.add_argument("--ranking", choices=("local", "global"), help="RAFT ranking (default local)")
    p.add_argument("--alpha", type=float, help="RAFT's kept fraction α (default 0.125)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance of the candidates (default 3)")
    p.add_argument("--iterations", type=int, help="RAFT iterations")
    p.add_argument("--proposal", choices=pipeline.PROPOSALS,
                   help="where the guided candidates come from: the frozen pre-trained model (pretrained, default) "
                        "or the model being fine-tuned (current, as in the paper: guidance compounds and collapses)")
    p.add_argument("--raft-lr", dest="raft_lr", type=float, help="RAFT's fine-tuning learning rate (default 3e-4)")
    p.add_argument("--prompts", type=int, help="digit prompts per RAFT iteration (a multiple of 10)")
    p.add_argument("--realism-filter", dest="realism_filter", action="store_true", default=None,
                   help="never keep candidates that fail the PCA realism check (a reward-hacking filter)")
    p.add_argument("--seed", type=int, help="the run seed (data split, init, RAFT keys)")
    a = p.parse_args(argv)
    over = {k: v for k, v in vars(a).items() if k not in ("out", "tiny") and v is not None}
    make = pipeline.Settings.tiny if a.tiny else pipeline.Settings
    if over.get("ranking") == "global" and "prompts" not in over:
        # One candidate per prompt: as many prompts as local ranking draws candidates.
        over["prompts"] = make().prompts * round(1.0 / over.get("alpha", make().alpha))
    try:
        s = make(**over)
    except JaxalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(s, Path(a.out))
    return 0
