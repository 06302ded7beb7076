"""Fuzzed run configs: any value for any key, any YAML document, any override string.

The contract (tests/config/test_config.py and tests/cli/test_train.py check the exact messages of
known cases): a config is either accepted, and then every number in it is finite and the
shared counts and rates are in range, or refused with one :class:`JaxalignError` line that
names a config key or the file. Never another exception, and through the CLI: exit code 2,
one ``error:`` line, and the run directory exactly as it was. Derandomised for CI.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from jaxalign import algorithms
from jaxalign.config import RunConfig, load_config
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from tests.fuzz_helpers import FUZZ, cli_error_line, one_error_line, tree_digest
from tests import procenv
from tests.procenv import subprocess_env
NAMES = list(algorithms.registry.BUILTIN)


def keys_of(cls, prefix: str = "") -> list[str]:
    """Every leaf key of a config dataclass, dotted."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += keys_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


SHARED_KEYS = keys_of(RunConfig) + [f"model.config.{f.name}" for f in dataclasses.fields(ModelConfig)]
SECTION_KEYS = {a: keys_of(algorithms.get(a).config_class, algorithms.get(a).section + ".") for a in NAMES}

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([-(2**40), 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e-300, -0.0, 1e300]),
    st.text(max_size=8), st.sampled_from(["../../etc/passwd", "/tmp/x", "~", "pow2", "nan", "inf", "1e-5",
                                          "float32", "sigmoid", "token_mean", "random"]),
    st.dates(),
)
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=6)


def floats_of(node, prefix=""):
    """(key, value) of every float anywhere in a config (dataclasses, dicts, lists)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from floats_of(getattr(node, f.name), f"{prefix}{f.name}.")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from floats_of(v, f"{prefix}{k}.")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from floats_of(v, f"{prefix}{i}.")
    elif isinstance(node, float):
        yield prefix[:-1], node


def assert_sane(cfg: RunConfig) -> None:
    """What an accepted config promises the rest of jaxalign."""
    for key, v in floats_of(cfg):
        assert math.isfinite(v), (key, v)
    t, d, o = cfg.train, cfg.data, cfg.optim
    assert 0 <= cfg.seed < 2**32
    assert t.batch_size > 0 and (t.steps is None or t.steps > 0) and t.epochs > 0
    assert t.micro_batch_size is None or (t.micro_batch_size > 0 and t.batch_size % t.micro_batch_size == 0)
    assert t.log_every > 0 and t.keep_checkpoints > 0 and t.max_nonfinite_steps > 0
    assert t.eval_every >= 0 and t.save_every >= 0 and (t.eval_batches is None or t.eval_batches > 0)
    assert 2 <= d.max_length and 1 <= d.max_prompt_length < d.max_length and 0 <= d.eval_fraction < 1
    assert o.lr >= 0 and o.warmup_steps >= 0 and 0 <= o.min_lr_ratio <= 1 and o.weight_decay >= 0
    assert 0 <= o.b1 < 1 and 0 <= o.b2 < 1 and o.eps > 0 and (o.grad_clip is None or o.grad_clip > 0)
    for n in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor):
        assert n == -1 or n >= 1
    for k, v in (cfg.model.config or {}).items():
        if k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
            assert isinstance(v, int) and not isinstance(v, bool) and v > 0, (k, v)


def load(alg, overrides, path=None):
    """load_config; the contract: a sane config or one JaxalignError line naming a key."""
    try:
        cfg = load_config(path or f"configs/{alg}_tiny.yaml", overrides, algorithm=alg)
    except JaxalignError as e:
        msg = one_error_line(e)
        assert re.search(r"config keys?:? (?:'[^']+'|\"[^\"]+\")|not valid YAML|unknown algorithm|config says algorithm|"
                         r"override '", msg), msg
        return None
    assert_sane(cfg)
    return cfg


@st.composite
def override(draw):
    alg = draw(st.sampled_from(NAMES))
    key = draw(st.sampled_from(SHARED_KEYS + SECTION_KEYS[alg]))
    v = draw(value)
    text = "" if v == "" else yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
    text = text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
    return alg, f"{key}={text}"


@settings(FUZZ, max_examples=500)
@given(case=override())
def test_any_value_for_any_key_is_accepted_sanely_or_refused_naming_a_key(case):
    alg, item = case
    load(alg, [item])


@settings(FUZZ, max_examples=200)
@given(alg=st.sampled_from(NAMES), items=st.lists(st.text(alphabet="abcdeglmnprstz._=-[]{}:, 0189'\"!&*",
                                                          max_size=20), max_size=3))
def test_any_override_string_is_accepted_sanely_or_refused_in_one_line(alg, items):
    try:
        cfg = load_config(f"configs/{alg}_tiny.yaml", items, algorithm=alg)
    except JaxalignError as e:
        one_error_line(e)
        return
    assert_sane(cfg)


def mutate(text: str, draw) -> bytes:
    """Text-level damage a hand-edited YAML file gets."""
    kind = draw(st.sampled_from(["none", "none", "tab", "dup", "bytes", "deep", "tag", "cut", "bom", "anchor"]))
    lines = text.splitlines()
    if kind == "tab" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = "\t" + lines[i]
    elif kind == "dup" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif kind == "cut":
        return text[: draw(st.integers(0, len(text)))].encode()
    elif kind == "bytes":
        return text.encode() + draw(st.sampled_from([b"\xff\xfe", b"caf\xe9", b"\x00", b"\xc3"]))
    elif kind == "deep":
        n = draw(st.sampled_from([50, 3000, 20000]))
        lines.append("model:\n  config: " + "[" * n + "]" * n)
    elif kind == "tag":
        lines.append(draw(st.sampled_from(["seed: !!python/object/apply:os.system ['true']",
                                           "x: !!python/name:os.system", "seed: !!binary aGk=",
                                           "seed: !custom 3"])))
    elif kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    elif kind == "anchor":
        lines = ["a: &a [1, 1, 1]", "b: &b [*a, *a, *a]", "c: &c [*b, *b, *b]"] + lines
    return "\n".join(lines).encode()


section_names = ["algorithm", "seed", "run_dir", "quiet", "model", "data", "optim", "train", "mesh"]
doc = st.dictionaries(st.one_of(st.sampled_from(section_names + [algorithms.get(a).section for a in NAMES]),
                                st.text(max_size=5), st.integers()),
                      st.one_of(value, st.dictionaries(st.sampled_from(
                          [k.split(".")[-1] for k in SHARED_KEYS] + ["nope"]), value, max_size=3)),
                      max_size=5)


@settings(FUZZ, max_examples=250)
@given(alg=st.sampled_from(NAMES), base=st.one_of(doc, value), data=st.data())
def test_any_yaml_file_is_accepted_sanely_or_refused_in_one_line(alg, base, data):
    text = yaml.safe_dump(base, sort_keys=False, allow_unicode=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(mutate(text, data.draw))
        try:
            cfg = load_config(path, [], algorithm=alg)
        except JaxalignError as e:
            one_error_line(e)
            return
    assert_sane(cfg)


@pytest.mark.parametrize("content, expected", [
    (b"seed: 1\nseed: 2\n", "not valid YAML at line 2 (duplicate key 'seed')"),
    (b"train: {steps: 3}\ntrain: {batch_size: 2}\n", "not valid YAML at line 2 (duplicate key 'train')"),
    (b"model:\n  config: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML (nested too deeply)"),
    (b"seed: 1 # caf\xe9\n", "not UTF-8 text (byte 13)"),
    (b"seed: !!python/object/apply:os.system ['touch pwned']\n",
     "not valid YAML at line 1 (could not determine a constructor for the tag"),
], ids=["duplicate-key", "duplicate-section", "deep-nesting", "latin-1", "python-tag"])
def test_found_yaml_bugs(tmp_path, content, expected):
    """Found by the fuzzer: a repeated key silently dropped the first value (``train.steps`` was
    lost), deep nesting raised RecursionError and a Latin-1 byte UnicodeDecodeError (tracebacks).
    Python tags were already refused (``yaml.safe_load``); kept here as a safety check."""
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(JaxalignError) as e:
        load_config(path, [], algorithm="sft")
    assert one_error_line(e.value).startswith(f"{path}: {expected}"), str(e.value)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(JaxalignError, match="is a directory, not a config file"):
        load_config(tmp_path, [], algorithm="sft")


def _billion_laughs(key: str) -> str:
    s = '&a ["l", "l", "l", "l", "l", "l", "l", "l", "l"]'
    for prev, name in zip("abcdefgh", "bcdefghi"):
        s = f"&{name} [{s}, {', '.join(['*' + prev] * 8)}]"
    section, k = key.split(".")
    return f"{section}:\n  {k}: {s}\n"


def test_a_billion_laughs_config_is_refused_quickly(tmp_path):
    """Found: YAML aliases expanding to 9**9 values hung load_config (the type error's repr of the
    value walked all of it). Run in a child process so that a regression fails instead of hanging."""
    import sys

    path = tmp_path / "laughs.yaml"
    path.write_text(_billion_laughs("data.buckets"))
    script = ("from jaxalign.config import load_config\nimport jaxalign.algorithms.sft\n"
              f"try:\n    load_config({str(path)!r}, [], algorithm='sft')\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = procenv.run([sys.executable, "-c", script], timeout=300,
                         cwd=Path(__file__).resolve().parents[2], env=subprocess_env())
    assert out.stdout.strip() == (f"JaxalignError {path}: not valid YAML (aliases expand to more than "
                                  "100,000 values)"), (out.stdout, out.stderr[-1000:])


@pytest.mark.parametrize("item, key", [
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("dpo.beta=.nan", "dpo.beta"),
    ("train.epochs=.inf", "train.epochs"), ("seed=-1", "seed"), ("mesh.fsdp=0", "mesh.fsdp"),
    ("optim.b2=1.5", "optim.b2"), ("data.eval_fraction=1", "data.eval_fraction"),
    ("model.config.hidden_size=0", "model.config.hidden_size"), ("data.buckets=[]", "data.buckets"),
    ("online_dpo.loss_type=[]", "online_dpo.loss_type"), ("sft.chunk_size=0", "sft.chunk_size"),
    ("dpo.loss_weights=[.nan]", "dpo.loss_weights"), ("model.config={rope_scaling: {factor: .inf}}", "model.config"),
], ids=lambda x: x if "=" in x else "")
def test_found_value_bugs_are_refused_naming_the_key(item, key):
    """Found by the fuzzer: accepted and failing later (a NaN run, ValueError from numpy's seed,
    ZeroDivisionError in the mesh, StopIteration for an empty loss list), or silently wrong."""
    alg = item.split(".")[0].replace("_", "-") if item.split(".")[0] in ("dpo", "online_dpo", "sft") else "sft"
    with pytest.raises(JaxalignError) as e:
        load_config(f"configs/{alg}_tiny.yaml", [item], algorithm=alg)
    assert one_error_line(e.value).startswith(f"config key {key!r}: "), str(e.value)


@settings(FUZZ, max_examples=8)
@given(case=override().filter(lambda c: load(c[0], [c[1]]) is None))
def test_cli_bad_config_is_one_error_line_with_exit_2_and_the_run_dir_untouched(capsys, case):
    from jaxalign.cli import main

    alg, item = case
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
        before = tree_digest(run)
        capsys.readouterr()
        rc = main([alg, "--config", f"configs/{alg}_tiny.yaml", "--run-dir", str(run), "--quiet", item])
        cli_error_line(capsys, rc)
        assert tree_digest(run) == before


def test_dates_and_timestamps_are_type_errors():
    assert load("sft", ["seed=2020-01-01"]) is None
    with pytest.raises(JaxalignError, match=r"config key 'seed': expected int, got datetime.date"):
        load_config("configs/sft_tiny.yaml", [f"seed={datetime.date(2020, 1, 1)}"], algorithm="sft")
