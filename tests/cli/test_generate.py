"""``jaxalign generate`` on a tiny random model with the shipped byte-level tokenizer."""

import json
import shutil
from importlib import resources

import pytest

from jaxalign import init_model, save_model
from jaxalign.cli import main
from jaxalign.models.config import ModelConfig
from tests.rollout.conftest import exact_float32_matmuls  # noqa: F401  (autouse, as in tests/rollout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_lm")
    cfg = ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=2,
                      pad_token_id=3)
    save_model(init_model(cfg, seed=0), d)
    tok_dir = resources.files("jaxalign") / "data" / "shipped" / "tokenizer_tiny"
    for f in tok_dir.iterdir():
        shutil.copy(str(f), d / f.name)
    return d


def run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_chat_samples(model_dir, capsys):
    code, out, err = run(capsys, "--model", model_dir, "--prompt", "hello", "--prompt", "a longer prompt",
                         "--chat", "--max-new-tokens", 6, "--temperature", 0.8, "--top-p", 0.9,
                         "--num-samples", 2, "--seed", 1, "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in rows] == [
        ("hello", 0), ("hello", 1), ("a longer prompt", 0), ("a longer prompt", 1)]
    assert all(1 <= r["tokens"] <= 6 and isinstance(r["completion"], str) for r in rows)
    assert "tokens in" in err
    again = run(capsys, "--model", model_dir, "--prompt", "hello", "--prompt", "a longer prompt",
                "--chat", "--max-new-tokens", 6, "--temperature", 0.8, "--top-p", 0.9,
                "--num-samples", 2, "--seed", 1, "--json")[1]
    assert again == out  # same seed, same output


def test_generate_prompts_file_plain_text(model_dir, tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\n\n{"prompt": "two"}\n')
    code, out, err = run(capsys, "--model", model_dir, "--prompts-file", f, "--greedy",
                         "--max-new-tokens", 4, "--batch-size", 1)
    assert code == 0, err
    assert "=== [0] 'one'" in out and "=== [1] 'two'" in out
    txt = tmp_path / "p.txt"
    txt.write_text("first\nsecond\n")
    code, out, _ = run(capsys, "--model", model_dir, "--prompts-file", txt, "--greedy",
                       "--max-new-tokens", 4, "--json")
    assert code == 0 and len(out.splitlines()) == 2


@pytest.mark.parametrize("argv, msg", [
    (["--prompts-file", "/nonexistent/prompts.txt"], "no such file"),
    (["--prompt", "x", "--top-p", "1.5"], "--top-p"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature"),
])
def test_generate_errors_exit_2(model_dir, capsys, argv, msg):
    code, _, err = run(capsys, "--model", model_dir, *argv)
    assert code == 2 and msg in err and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_bad_jsonl_row_and_missing_model(model_dir, tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    code, _, err = run(capsys, "--model", model_dir, "--prompts-file", f)
    assert code == 2 and "line 2" in err
    code, _, err = run(capsys, "--model", tmp_path / "missing", "--prompt", "x")
    assert code == 2 and "error:" in err
