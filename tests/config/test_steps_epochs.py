"""jaxalign.config.load: train.steps and train.epochs both set says, in one warning line, that
train.steps wins; the default epochs says nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.algorithms.conftest import TINY


def _warnings(capsys, overrides, path=TINY["sft"]):
    from jaxalign.config import load_config

    capsys.readouterr()
    cfg = load_config(path, overrides, algorithm="sft")
    return cfg, [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]


def test_both_set_warns_once_naming_the_winner(capsys):
    cfg, lines = _warnings(capsys, ["train.epochs=3"])  # the tiny config sets train.steps: 60
    assert cfg.train.steps == 60
    assert lines == ["warning: train.steps=60 and train.epochs=3.0 are both set; train.steps wins (the run "
                     "makes 60 steps whatever the data size) and train.epochs is ignored"]


def test_default_epochs_or_no_steps_says_nothing(capsys, tmp_path):
    assert _warnings(capsys, [])[1] == []  # steps set, epochs left at its default
    assert _warnings(capsys, ["train.steps=null", "train.epochs=2"])[1] == []  # epochs alone
    path = tmp_path / "c.yaml"
    path.write_text("model: {init: random, tokenizer: tiny}\ndata: {train: shipped:sft_tiny.jsonl}\n"
                    "train: {epochs: 2, steps: 5}\n")
    assert len(_warnings(capsys, [], path)[1]) == 1  # set in the file, not by an override


def test_the_warning_reaches_stderr():
    """In a fresh process the warning is a line of its own on stderr."""
    from tests.procenv import subprocess_env

    out = subprocess.run([sys.executable, "-c", "from jaxalign.config import load_config; "
                          f"load_config({TINY['sft']!r}, ['train.epochs=2'], algorithm='sft')"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert any(x.startswith("warning: train.steps=60 and train.epochs=2.0 are both set; train.steps wins")
               for x in out.stderr.splitlines()), out.stderr
