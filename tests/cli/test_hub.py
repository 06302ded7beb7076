"""``jaxalign info/export --model org/name`` read the local Hub cache; a missing id is one line, fast."""

from __future__ import annotations

import json
import sys
import time

import pytest

from jaxalign.cli import main
from tests import procenv
from tests.io.hub_fixtures import add_repo, hub_cache, tiny_model_dir  # noqa: F401  (fixture)
from tests.procenv import subprocess_env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_lm"))


def run(capsys, *argv):
    code = main([*map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_reads_a_hub_id_from_the_cache(hub_cache, tiny, capsys):
    add_repo(hub_cache, "tiny-org/tiny-lm", tiny, refs=("main", "v1"))
    code, out, err = run(capsys, "info", "--model", "tiny-org/tiny-lm", "--json")
    assert code == 0, err
    by_id = json.loads(out)
    code, out, err = run(capsys, "info", "--model", tiny, "--json")
    assert code == 0, err
    assert by_id == json.loads(out) and by_id["parameters"] > 0 and by_id["vocab_size"] == 260
    code, out, err = run(capsys, "info", "--model", "tiny-org/tiny-lm@v1", "--json")
    assert code == 0 and json.loads(out) == by_id, err


def test_export_from_a_hub_id_writes_the_model_and_its_tokenizer(hub_cache, tiny, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import load_file

    add_repo(hub_cache, "tiny-org/tiny-lm", tiny)
    code, out, err = run(capsys, "export", "--model", "tiny-org/tiny-lm", "--out", tmp_path / "out")
    assert code == 0, err
    assert "+ tokenizer" in out and (tmp_path / "out" / "tokenizer.json").is_file()
    a, b = load_file(tiny / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_missing_hub_id_is_one_error_line_within_seconds(tmp_path):
    """In a fresh process (as a user runs it): exit 2, one line on stderr, no retry warnings."""
    env = subprocess_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
                         HF_HUB_OFFLINE="1")
    t = time.monotonic()
    proc = procenv.run([sys.executable, "-m", "jaxalign.cli", "info", "--model", "HuggingFaceTB/NoSuchModel"],
                       timeout=300, env=env)
    took = time.monotonic() - t
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: HuggingFaceTB/NoSuchModel: no such file or directory, and Hugging Face "
                               "Hub model 'HuggingFaceTB/NoSuchModel' could not be fetched (offline"), lines[0]
    assert "hf download HuggingFaceTB/NoSuchModel" in lines[0]
    # The process start (imports) is most of it; the failure itself is immediate.
    assert took < 60, took


def test_sft_trains_a_hub_model_on_a_hub_dataset_split_from_the_cache(hub_cache, tiny, tmp_path, capsys):
    """model.path, its tokenizer and data.train (with :split and data.columns) all from the cache."""
    from tests.data.test_sources import QA_TEST, QA_TRAIN, README
    from tests.data.conftest import write_rows

    ds = tmp_path / "qa"
    (ds / "qa").mkdir(parents=True)
    write_rows(QA_TRAIN, ds / "qa" / "train-00000-of-00001.parquet", "parquet")
    write_rows(QA_TEST, ds / "qa" / "test-00000-of-00001.parquet", "parquet")
    (ds / "README.md").write_text(README.replace("- config_name: lm", "- config_name: unused"))
    add_repo(hub_cache, "tiny-org/tiny-lm", tiny)
    add_repo(hub_cache, "tiny-org/qa", ds, repo_type="dataset")
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "sft", "--config", procenv.ROOT / "configs" / "sft_tiny.yaml", "--run-dir", run_dir,
                         "--quiet", "model.init=pretrained", "model.path=tiny-org/tiny-lm", "model.config=null",
                         "model.tokenizer=null", "data.train=tiny-org/qa:test", "data.eval_fraction=0",
                         "data.columns={question: prompt, response: completion, id: null}", "train.steps=1",
                         "train.batch_size=2", "train.eval_every=0", "train.plots=false")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 1
    assert (run_dir / "final" / "model.safetensors").is_file()
