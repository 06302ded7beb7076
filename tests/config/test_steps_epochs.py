"""jaxalign.config.load: train.steps and train.epochs both set says, in one warning line, that
train.steps wins; the default epochs says nothing."""

from __future__ import annotations

import logging
import subprocess
import sys

from tests.algorithms.conftest import TINY


def _warnings(caplog, overrides, path=TINY["sft"]):
    from jaxalign.config import load_config

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxalign.config"):
        cfg = load_config(path, overrides, algorithm="sft")
    return cfg, [r.getMessage() for r in caplog.records if r.name == "jaxalign.config"]


def test_both_set_warns_once_naming_the_winner(caplog):
    cfg, lines = _warnings(caplog, ["train.epochs=3"])  # the tiny config sets train.steps: 60
    assert cfg.train.steps == 60
    assert lines == ["warning: train.steps=60 and train.epochs=3.0 are both set; train.steps wins (the run "
                     "makes 60 steps whatever the data size) and train.epochs is ignored"]


def test_default_epochs_or_no_steps_says_nothing(caplog, tmp_path):
    assert _warnings(caplog, [])[1] == []  # steps set, epochs left at its default
    assert _warnings(caplog, ["train.steps=null", "train.epochs=2"])[1] == []  # epochs alone
    path = tmp_path / "c.yaml"
    path.write_text("model: {init: random, tokenizer: tiny}\ndata: {train: shipped:sft_tiny.jsonl}\n"
                    "train: {epochs: 2, steps: 5}\n")
    assert len(_warnings(caplog, [], path)[1]) == 1  # set in the file, not by an override


def test_the_warning_reaches_stderr():
    """In a fresh process (no logging set up, as under the `jaxalign` command) the line reaches stderr."""
    from tests.procenv import subprocess_env

    out = subprocess.run([sys.executable, "-c", "from jaxalign.config import load_config; "
                          f"load_config({TINY['sft']!r}, ['train.epochs=2'], algorithm='sft')"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning: train.steps=60 and train.epochs=2.0 are both set; train.steps wins" in out.stderr
