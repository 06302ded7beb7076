"""``jaxalign demo``: the shipped movie-review openings (load, unique, stable disjoint split), the
per-algorithm configs, and the tiny end-to-end path (printed summary, written files, rewards
recomputed with VADER, KL recomputed with PyTorch/transformers on the exported model)."""

from __future__ import annotations

import hashlib
import json
import string

import numpy as np
import pytest
import yaml

from jaxalign.examples import demo
from jaxalign.cli import main
from jaxalign.config import load_config
from jaxalign.data import SHIPPED, prepare_dataset, shipped_path, tiny_tokenizer_path


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()))


def _rows():
    return [json.loads(line) for line in shipped_path("movie_prompts.jsonl").read_text().splitlines()]


def _norm(text: str) -> str:
    # Written independently of jaxalign.demo.normalize_opening: the two must agree.
    keep = set(string.ascii_lowercase + string.digits + "'")
    return " ".join("".join(c if c in keep else " " for c in text.lower()).split())


# -- the prompt set -----------------------------------------------------------------------------

def test_prompt_set_is_shipped_and_loads_with_the_tiny_tokenizer(tiny_tok):
    assert "movie_prompts.jsonl" in SHIPPED
    tokenized, stats = prepare_dataset(shipped_path("movie_prompts.jsonl"), tiny_tok, max_length=256,
                                       max_prompt_length=128)
    assert (stats.format, stats.rows, stats.examples, stats.skipped, stats.dropped) == ("prompt_only", 300, 300, 0, 0)
    assert all(len(t["prompt_ids"]) == len(r["prompt"].encode()) for t, r in zip(tokenized, _rows()))


def test_prompt_set_has_no_duplicates():
    rows = _rows()
    assert len(rows) == 300
    assert all(set(r) == {"prompt", "split"} for r in rows)
    texts = [r["prompt"] for r in rows]
    assert all(t == t.strip() and 3 <= len(t.split()) <= 16 for t in texts)
    assert len({_norm(t) for t in texts}) == len(texts)
    assert [demo.normalize_opening(t) for t in texts] == [_norm(t) for t in texts]


def test_split_is_disjoint_and_stable():
    rows = _rows()
    train = [r["prompt"] for r in rows if r["split"] == "train"]
    held = [r["prompt"] for r in rows if r["split"] == "heldout"]
    assert (len(train), len(held)) == (260, 40) and len(train) + len(held) == len(rows)
    assert not {_norm(t) for t in train} & {_norm(t) for t in held}
    # The rule, recomputed: the 40 smallest SHA-256 digests of the normalised text are held out.
    digest = {r["prompt"]: hashlib.sha256(_norm(r["prompt"]).encode()).hexdigest() for r in rows}
    assert set(held) == set(sorted(digest, key=digest.get)[:40])
    assert demo.movie_prompts("heldout") == held and demo.movie_prompts("train") == train
    assert demo.movie_prompts() == [r["prompt"] for r in rows]


def test_render_prompt_puts_the_opening_in_the_assistant_turn(tiny_tok):
    text = demo.render_prompt(tiny_tok, "The film opens with")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nContinue this movie review.<|im_end|>\n"
                    "<|im_start|>assistant\nThe film opens with")


# -- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(demo.PLANS))
@pytest.mark.parametrize("tiny", [False, True])
def test_every_algorithm_config_validates(tmp_path, algorithm, tiny):
    sizes = demo.TINY if tiny else demo.FULL
    steps = demo.plan_steps(algorithm, sizes, 10.0)
    raw = demo.demo_config(algorithm, sizes, tmp_path, steps)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.algorithm == algorithm and cfg.train.steps == steps
    assert cfg.data.max_prompt_length + sizes.max_new_tokens <= cfg.data.max_length
    if tiny:
        assert steps == 3 and cfg.model.init == "random"
    else:
        plan = demo.PLANS[algorithm]
        assert cfg.model.path == "smollm2-135m-instruct" and steps >= 10
        pairs = sizes.pair_prompts * sizes.pair_seconds_per_prompt if plan.pairs else 0
        assert sizes.overhead_s + pairs + steps * plan.seconds_per_step <= 600


def test_budget_and_default():
    assert demo.plan_steps("raft", demo.FULL, 20) > demo.plan_steps("raft", demo.FULL, 10)
    assert demo.plan_steps("raft", demo.FULL, 0.1) == 1
    assert demo.default_algorithm() == "raft"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "--tiny", "--steps", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert "error: demo: --steps must be > 0" in capsys.readouterr().err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "demo_summary.json").write_text("{}")
    assert main(["demo", "--tiny", "--run-dir", str(tmp_path / "old")]) == 2
    assert "already holds a run" in capsys.readouterr().err


# -- the tiny end-to-end path -------------------------------------------------------------------

def _vader(texts):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    return np.array([sia.polarity_scores(t)["compound"] for t in texts])


def _torch_kl(final_dir, ref_dir, tokens, attn, comp):
    """Mean over completion tokens of log p − log p_ref, in PyTorch on the exported models."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    ids = torch.tensor(tokens, dtype=torch.long)
    mask = torch.tensor(attn, dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = []
    for d in (final_dir, ref_dir):
        m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits.double()
        out.append(torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].numpy())
    c = comp[:, 1:].astype(bool)
    return float(np.where(c, out[0] - out[1], 0.0).sum() / c.sum())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One ``jaxalign demo --tiny`` run (the CI smoke test): ``(run_dir, printed, summary)``."""
    import contextlib
    import io

    run_dir = tmp_path_factory.mktemp("demo") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--tiny", "--quiet", "--run-dir", str(run_dir)]) == 0
    return run_dir, out.getvalue(), json.loads((run_dir / "demo_summary.json").read_text())


def test_tiny_demo_prints_the_summary_and_writes_the_files(tiny_run):
    run_dir, printed, s = tiny_run
    assert s["algorithm"] == "raft" and s["steps"] == 3 and s["heldout_prompts"] == 40
    for field in ("held-out reward", "before:", "after:", "KL to the reference", "per token",
                  "aligned model (Hugging Face format): " + str(run_dir / "final"), "plots:"):
        assert field in printed, field
    assert f"before: {s['reward_before']:+.4f}" in printed and f"after:  {s['reward_after']:+.4f}" in printed
    assert f"{s['kl_per_token']:.4f} per token" in printed
    for i, ex in enumerate(s["examples"][:3]):
        assert f"[{i + 1}] {ex['opening']} ..." in printed
    assert "[4]" not in printed
    lines = printed.splitlines()
    assert sum(" | after (" in ln and "before (" in ln for ln in lines) == 3  # side by side

    # Files: the aligned model in HF format, plots, data, samples.
    for rel in ("final/config.json", "final/tokenizer.json", "plots/training.png", "plots/demo_rewards.png",
                "metrics.jsonl", "config.yaml", "demo_config.yaml", "heldout_samples.npz"):
        assert (run_dir / rel).is_file(), rel
    assert list((run_dir / "final").glob("*.safetensors"))
    assert len((run_dir / "data" / "train.jsonl").read_text().splitlines()) == 260
    held = [json.loads(x) for x in (run_dir / "data" / "heldout.jsonl").read_text().splitlines()]
    assert [r["opening"] for r in held] == demo.movie_prompts("heldout")
    assert all(r["prompt"].endswith(r["opening"]) for r in held)


def test_tiny_demo_rewards_are_vader_of_the_completions(tiny_run):
    run_dir, _, s = tiny_run
    before = [e["before"] for e in s["examples"]]
    after = [e["after"] for e in s["examples"]]
    assert np.allclose(_vader(before), [e["reward_before"] for e in s["examples"]], atol=1e-6)
    assert np.allclose(_vader(after), [e["reward_after"] for e in s["examples"]], atol=1e-6)
    assert s["reward_before"] == pytest.approx(_vader(before).mean(), abs=1e-6)
    assert s["reward_after"] == pytest.approx(_vader(after).mean(), abs=1e-6)
    z = np.load(run_dir / "heldout_samples.npz")
    assert np.allclose(z["after_rewards"], [e["reward_after"] for e in s["examples"]])


def test_tiny_demo_kl_matches_pytorch(tiny_run, tmp_path):
    """The KL of the aligned model, recomputed in PyTorch/transformers on the exported final/
    against the reference (the same random init, rebuilt and exported here)."""
    run_dir, _, s = tiny_run
    from jaxalign.algorithms import common
    from jaxalign.api import save_model

    cfg = load_config(run_dir / "demo_config.yaml")
    mesh = common.mesh_from(cfg)
    save_model(common.model_from(cfg, mesh, common.tokenizer_from(cfg)), tmp_path / "ref")
    z = np.load(run_dir / "heldout_samples.npz")
    kl = _torch_kl(run_dir / "final", tmp_path / "ref", z["after_tokens"], z["after_attention_mask"],
                   z["after_completion_mask"])
    assert kl > 1e-3  # three steps at lr 1e-2 move a tiny model
    assert s["kl_per_token"] == pytest.approx(kl, rel=1e-3, abs=1e-5)


def _planted(prompts, completions):
    """Mean code point / 1000: a score that varies on a random model's bytes."""
    return np.array([np.mean([ord(c) for c in t]) / 1000 if t else 0.0 for t in completions], np.float32)


@pytest.mark.slow
def test_tiny_demo_dpo_labels_sampled_pairs(tmp_path, monkeypatch):
    """Offline DPO: pairs sampled from the starting model, the higher-scored one chosen. A random
    tiny model writes no sentiment words, so a planted score (mean code point / 1000) stands in for VADER."""
    from jaxalign.rewards import functions

    monkeypatch.setattr(functions, "sentiment_reward", _planted)
    s = demo.run_demo("dpo", tiny=True, run_dir=tmp_path / "run", quiet=True)
    p = s["pairs"]
    assert p["prompts"] == 16 and p["pairs"] + p["ties"] + p["empty_or_identical"] == 16 and p["pairs"] >= 4
    pairs = [json.loads(x) for x in (tmp_path / "run" / "data" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == p["pairs"]
    train = [json.loads(x)["prompt"] for x in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    for r in pairs:
        assert r["prompt"] in train[:16]
        sc, sr = _planted(None, [r["chosen"], r["rejected"]])
        assert sc > sr and r["score_chosen"] == pytest.approx(sc) and r["score_rejected"] == pytest.approx(sr)
    assert s["steps"] == 3 and (tmp_path / "run" / "final" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "ppo", "online-dpo"])
def test_tiny_demo_other_online_algorithms(tmp_path, capsys, monkeypatch, algorithm):
    """The --algorithm switch: each online algorithm trains and is measured. VADER scores a random
    tiny model's bytes 0 (no update for policy-gradient methods), so a planted score stands in."""
    from jaxalign.rewards import functions

    monkeypatch.setattr(functions, "sentiment_reward", _planted)
    assert main(["demo", "--tiny", "--quiet", "--algorithm", algorithm, "--run-dir", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    s = json.loads((tmp_path / "r" / "demo_summary.json").read_text())
    assert s["algorithm"] == algorithm and s["steps"] == 3 and f"jaxalign demo: {algorithm} on" in printed
    assert np.isfinite(s["kl_per_token"]) and s["kl_per_token"] > 0.0
    assert (tmp_path / "r" / "final" / "config.json").is_file()
