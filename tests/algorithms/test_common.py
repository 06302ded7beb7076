"""jaxalign.algorithms.common: the warning line about rows cut or dropped by data.max_length /
data.max_prompt_length (per split), and data.max_length beyond the model's positions."""

from __future__ import annotations

import json

import pytest

from jaxalign.errors import JaxalignError
from tests.algorithms.conftest import tiny_cfg


def _rows():
    from jaxalign.data import shipped_path

    return [json.loads(x) for x in shipped_path("sft_tiny.jsonl").read_text().splitlines() if x.strip()]


def _lengths():
    """(prompt tokens, completion tokens) of each shipped row, from the tokenizer itself: a string
    is its own tokens (the tiny tokenizer adds no BOS) and a completion ends with one EOS; a
    conversation is transformers' rendering, less the "\n" ChatML writes after the last turn."""
    from transformers import AutoTokenizer

    from jaxalign.data import tiny_tokenizer_path

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()), local_files_only=True)
    out = []
    for r in _rows():
        if isinstance(r["prompt"], str):
            out.append((len(tok(r["prompt"])["input_ids"]), len(tok(r["completion"])["input_ids"]) + 1))
        else:
            p = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"])
            full = len(tok.apply_chat_template(r["prompt"] + r["completion"])["input_ids"])
            out.append((p, full - 1 - p))
    return out


def _expected(max_length, max_prompt_length, drop):
    """(truncated, prompt_truncated, dropped) over the shipped rows."""
    truncated = prompt_cut = dropped = 0
    for p, c in _lengths():
        if p > max_prompt_length:
            if drop:
                dropped += 1
                continue
            prompt_cut += 1
            p = max_prompt_length
        truncated += p + c > max_length
    return truncated, prompt_cut, dropped


def _load(capsys, *overrides):
    """The warning lines on stderr while loading the data of the tiny SFT config + ``overrides``."""
    from jaxalign.algorithms import common
    from jaxalign.algorithms import data_setup

    cfg = tiny_cfg("sft", *overrides)
    tok = common.tokenizer_from(cfg)
    capsys.readouterr()
    data_setup.datasets_from(cfg, tok, ("sft",))
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]


def test_one_warning_line_per_split_with_the_counts(capsys):
    n = len(_rows())
    t, pc, _ = _expected(24, 16, drop=False)
    assert t > 0 and pc > 0 and t < n
    lines = _load(capsys, "data.max_length=24", "data.max_prompt_length=16", "data.eval=shipped:sft_tiny.jsonl")
    assert len(lines) == 2, lines
    train, ev = lines
    assert train == (f"warning: data.max_length=24 truncated {t} of {n} train rows ({100 * t / n:.1f}%); "
                     f"data.max_prompt_length=16 cut the start of {pc} of {n} train prompts "
                     f"({100 * pc / n:.1f}%; data.prompt_overflow=truncate_left)")
    assert ev == train.replace(" train ", " eval ")


def test_drop_is_counted(capsys):
    n = len(_rows())
    t, _, d = _expected(40, 30, drop=True)
    assert 0 < d < n
    (line,) = _load(capsys, "data.max_length=40", "data.max_prompt_length=30", "data.prompt_overflow=drop")
    want = f"data.prompt_overflow=drop dropped {d} of {n} train rows (prompts over data.max_prompt_length=30)"
    if t:
        want = f"data.max_length=40 truncated {t} of {n} train rows ({100 * t / n:.1f}%); " + want
    assert line == "warning: " + want


def test_no_warning_when_nothing_is_cut(capsys):
    assert _expected(128, 96, drop=False) == (0, 0, 0)
    assert _load(capsys) == []


def test_max_length_beyond_the_random_models_positions_is_an_error():
    from jaxalign.algorithms import common, sft

    cfg = tiny_cfg("sft", "data.max_length=600")  # the tiny model has max_position_embeddings: 512
    with pytest.raises(JaxalignError) as e:
        sft.build_job(cfg)
    assert str(e.value) == ("config key 'data.max_length': 600 is more than the model's max_position_embeddings=512 "
                            "(model.config.max_position_embeddings); lower data.max_length to 512 or less")
    cfg = tiny_cfg("sft", "data.max_length=512", "model.config.num_hidden_layers=1")
    common.model_from(cfg, common.mesh_from(cfg), common.tokenizer_from(cfg))  # at the limit: fine


def test_max_length_beyond_the_pretrained_models_positions_is_an_error(tmp_path):
    from jaxalign.algorithms import common
    from jaxalign.io.load import save_model

    cfg = tiny_cfg("sft", "model.config.max_position_embeddings=64", "model.config.num_hidden_layers=1",
                   "data.max_length=64", "data.max_prompt_length=32")
    tok = common.tokenizer_from(cfg)
    save_model(common.model_from(cfg, common.mesh_from(cfg), tok), tmp_path / "m")
    over = tiny_cfg("sft", f"model.path={tmp_path / 'm'}", "model.init=pretrained", "model.config=null",
                    "data.max_length=65", "data.max_prompt_length=32")
    with pytest.raises(JaxalignError, match=r"^config key 'data.max_length': 65 is more than the model's "
                                            r"max_position_embeddings=64 \(model.path\)"):
        common.model_from(over, common.mesh_from(over), tok)
