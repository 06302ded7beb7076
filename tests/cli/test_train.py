"""`jaxalign sft` end to end: the tiny config learns and writes the run directory (the exported
model gives transformers the same logits), and every kind of bad input is one `error:` line
with exit code 2 that names the file, row and field (or the config key), written before
anything touches the run directory. Identical preference pairs are dropped and counted."""

from __future__ import annotations

import json
import logging
import re

import jax
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.config import load_config
from jaxalign.data import shipped_path
from jaxalign.train.metrics import read_metrics

CONFIG = "configs/sft_tiny.yaml"


def sft(run_dir, *overrides, quiet=True):
    return ["sft", "--config", CONFIG, "--run-dir", str(run_dir)] + (["--quiet"] if quiet else []) \
        + list(overrides)


def one_line_error(capsys, rc) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_sft_tiny_learns_and_writes_the_run_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # One padded length (data.buckets) so the 10 steps compile once.
    rc = main(sft(run_dir, "train.steps=10", "train.log_every=1", "train.eval_every=5",
                  "optim.warmup_steps=1", "train.save_every=5", "data.buckets=[128]", quiet=False))
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 10 and summary["stopped"] is False
    # The layout: resolved config, metrics, checkpoints, plots, the final model.
    cfg = load_config(run_dir / "config.yaml", algorithm="sft")
    assert cfg.train.steps == 10 and cfg.model.config["hidden_size"] == 64 and cfg.algo.aggregation == "token_mean"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["10", "5"]
    assert (run_dir / "plots" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (run_dir / "final").iterdir()}
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [5, 10] and evals[1]["eval/loss"] < evals[0]["eval/loss"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3, (train[0]["loss"], train[-1]["loss"])
    assert all(r["tokens_per_s"] > 0 for r in train)
    # The progress bar shows the loss and tokens/s.
    assert re.search(r"loss=\d+\.\d{4}", err) and re.search(r"tok_s=\d+", err)
    assert f"final model (Hugging Face format): {run_dir / 'final'}" in err

    # final/ holds exactly the parameters of the last checkpoint.
    import orbax.checkpoint as ocp
    from safetensors.numpy import load_file

    mgr = ocp.CheckpointManager(run_dir / "checkpoints")
    params = mgr.restore(10, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
    mgr.close()
    flat = {"/".join(str(getattr(k, "key", k)) for k in path if getattr(k, "key", None) != "value"): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    tensors = load_file(run_dir / "final" / "model.safetensors")
    assert len(tensors) == 2 + 9 * cfg.model.config["num_hidden_layers"]
    for name, t in tensors.items():
        parts = name.split(".")[1:]  # drop "model."
        if parts[0] == "layers":
            np.testing.assert_array_equal(t, flat["/".join(["layers"] + parts[2:])][int(parts[1])], name)
        else:
            np.testing.assert_array_equal(t, flat["/".join(parts)], name)

    # transformers loads final/ and gives the logits jaxalign gives.
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jaxalign.api import forward_logits, load_model

    tok = AutoTokenizer.from_pretrained(str(run_dir / "final"))
    texts = ["How was the movie? It was wonderful, thank you!", "Hi"]
    enc = tok(texts, padding=True, return_tensors="np")
    ids, attn = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert attn[1].sum() < attn.shape[1]  # a padded row too
    hf = AutoModelForCausalLM.from_pretrained(str(run_dir / "final"), dtype=torch.float32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(attn, dtype=torch.long)).logits.numpy()
    ours = np.asarray(forward_logits(load_model(run_dir / "final"), ids, attn))
    real = attn.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(16)]


@pytest.mark.parametrize("bad, field, what", [
    ({"prompt": "hi"}, "completion", "missing"),
    ({"prompt": 3, "completion": " x"}, "prompt", "expected a string or a list of messages, got int"),
    ({"prompt": "hi", "completion": ""}, "completion", "empty string"),
    ({"prompt": "x" * 300, "completion": " y"}, "prompt",
     "more than max_prompt_length=96 (prompt_overflow: error"),
], ids=["missing-field", "wrong-type", "empty-completion", "prompt-too-long"])
def test_bad_row_is_one_line_naming_file_row_and_field(tmp_path, capsys, bad, field, what):
    data = _jsonl(tmp_path / "train.jsonl", GOOD[:5] + [bad] + GOOD[5:])
    run_dir = tmp_path / "run"
    rc = main(sft(run_dir, f"data.train={data}", "data.prompt_overflow=error"))
    msg = one_line_error(capsys, rc)
    assert msg.startswith(f"error: {data}: row 5 (0-based): field '{field}': "), msg
    assert what in msg, msg
    assert not run_dir.exists()  # nothing written, no checkpoint


@pytest.mark.parametrize("overrides, expected", [
    (["train.stpes=3"], "error: unknown config key 'train.stpes'; did you mean 'train.steps'?"),
    (["optim.learning_rate=1e-4"], "error: unknown config key 'optim.learning_rate'; did you mean 'optim.lr'? "
                                   "('learning_rate' is TRL's name)"),
    (["model.init=pretrained", "model.path={tmp}/no-such-model"],
     "error: config key 'model.path': {tmp}/no-such-model: no such file or directory"),
    (["model.init=pretrained", "model.path={tmp}/no-such-model", "model.tokenizer=tiny"],
     "error: config key 'model.path': {tmp}/no-such-model: no such file or directory"),
    (["model.path={tmp}/model", "model.init=random"],
     "error: config key 'model.path': '{tmp}/model' is set but 'model.init' is 'random', which ignores it"),
    (["train.micro_batch_size=3"], "error: config key 'train.micro_batch_size': 3 does not divide "
                                   "train.batch_size=8"),
    (["train.micro_batch_size=0"], "error: config key 'train.micro_batch_size': must be > 0"),
    (["train.batch_size=0"], "error: config key 'train.batch_size': must be > 0, got 0"),
    (["train.steps=0"], "error: config key 'train.steps': must be > 0, got 0"),
    (["train.steps=-3"], "error: config key 'train.steps': must be > 0, got -3"),
    (["train.steps=ten"], "error: config key 'train.steps': expected int or NoneType, got 'ten'"),
], ids=["typo-did-you-mean", "unknown-key", "model-path", "model-path-tiny-tokenizer", "model-path-random-init",
        "micro-batch-not-dividing", "micro-batch-zero", "batch-zero", "steps-zero", "steps-negative",
        "steps-not-int"])
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, overrides, expected):
    run_dir = tmp_path / "run"
    rc = main(sft(run_dir, *[o.format(tmp=tmp_path) for o in overrides]))
    msg = one_line_error(capsys, rc)
    assert msg.startswith(expected.format(tmp=tmp_path)), msg
    assert not run_dir.exists()


def test_identical_preference_pairs_are_dropped_counted_and_the_run_goes_on(tmp_path, capsys, caplog):
    """chosen == rejected is a warning and a count, not an error (through `jaxalign dpo`)."""
    pytest.importorskip("jaxalign.algorithms.dpo")
    rows = [json.loads(l) for l in shipped_path("preference_tiny.jsonl").read_text().splitlines()][:16]
    same = [dict(rows[i], rejected=rows[i]["chosen"]) for i in (3, 9)]
    data = _jsonl(tmp_path / "pairs.jsonl", rows[:5] + [same[0]] + rows[5:12] + [same[1]] + rows[12:])
    with caplog.at_level(logging.WARNING, logger="jaxalign.data"):
        rc = main(["dpo", "--config", "configs/dpo_tiny.yaml", "--run-dir", str(tmp_path / "run"),
                   f"data.train={data}", "train.steps=2", "train.batch_size=8", "train.log_every=1",
                   "train.plots=false", "train.save_final=false"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    assert f"dropped 2 preference row(s) whose 'rejected' is identical to 'chosen' (rows 5, 13, 0-based)" \
        in caplog.text
    assert f"data.train: {data}: 16 preference examples (2 identical pairs dropped)" in err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 2
