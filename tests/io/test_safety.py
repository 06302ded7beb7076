"""Safety: weights only from safetensors/GGUF (never a pickle), no code from model directories,
chat templates sandboxed, and data/config files read as data, never evaluated.

Every planted payload would create a marker file if it ran; each test checks that it did not.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import pytest

from jaxalign.errors import JaxalignError
from tests.fuzz_helpers import cli_error_line, one_error_line

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def tok():
    from jaxalign.data import tiny_tokenizer_path
    from jaxalign.io.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_path())


class _Payload:
    """Unpickling this creates the marker file: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_model_dir(d: Path, name: str = "pytorch_model.bin") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(TINY_LLAMA))
    (d / name).write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(d.parent / "UNPICKLED")}))
    return d


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "w.pkl"])
def test_a_pickle_only_model_dir_is_one_error_line_and_never_unpickled(tmp_path, name):
    from jaxalign.api import load_model

    d = _pickle_model_dir(tmp_path / "model", name)
    with pytest.raises(JaxalignError) as e:
        load_model(d)
    msg = one_error_line(e.value, f"{d}: only pickle weights ({name}) and no *.safetensors; jaxalign never unpickles")
    assert "safetensors" in msg and "GGUF" in msg
    assert not (tmp_path / "UNPICKLED").exists()


def test_an_index_naming_a_pickle_file_is_refused(tmp_path):
    from jaxalign.api import load_model

    d = _pickle_model_dir(tmp_path / "model")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "pytorch_model.bin"}}))
    with pytest.raises(JaxalignError, match="lists 'pytorch_model.bin'; jaxalign reads only"):
        load_model(d)
    assert not (tmp_path / "UNPICKLED").exists()


def test_cli_pickle_only_model_is_one_error_line(tmp_path, capsys):
    from jaxalign.cli import main

    d = _pickle_model_dir(tmp_path / "model")
    assert "only pickle weights (pytorch_model.bin)" in cli_error_line(capsys, main(["info", "--model", str(d)]))
    run = tmp_path / "run"
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run), "--quiet", "model.init=pretrained",
               f"model.path={d}", "model.tokenizer=tiny"])
    line = cli_error_line(capsys, rc)
    assert line.startswith(f"error: config key 'model.path': {d}: only pickle weights"), line
    assert not run.exists() and not (tmp_path / "UNPICKLED").exists()


MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def _tiny_tokenizer_dir(d: Path) -> Path:
    from jaxalign.data import tiny_tokenizer_path

    shutil.copytree(tiny_tokenizer_path(), d)
    return d


def test_a_tokenizer_that_needs_its_own_code_is_refused(tmp_path):
    from jaxalign.io.tokenizer import load_tokenizer

    d = _tiny_tokenizer_dir(tmp_path / "tok")
    marker = tmp_path / "RAN"
    (d / "tokenization_evil.py").write_text(MARKER_CODE.format(marker=str(marker))
                                            + "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(JaxalignError) as e:
        load_tokenizer(d)
    one_error_line(e.value, f"{d}: this tokenizer needs its own Python code (auto_map in tokenizer_config.json); "
                            "jaxalign never runs code from a model directory")
    assert not marker.exists()
    # With a standard tokenizer class the auto_map is ignored: it loads, and the code never runs.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert len(load_tokenizer(d)) > 0 and not marker.exists()


def test_a_model_config_with_auto_map_loads_with_the_builtin_code_and_says_so(tmp_path, caplog):
    import flax.nnx as nnx

    from jaxalign.api import load_model, save_model
    from jaxalign.models.config import ModelConfig
    from jaxalign.models.llama import CausalLM

    mc = ModelConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")},
                     head_dim=16)
    d = save_model(CausalLM(mc, rngs=nnx.Rngs(0)), tmp_path / "model")
    marker = tmp_path / "RAN"
    for module in ("modeling_evil", "configuration_evil"):
        (d / f"{module}.py").write_text(MARKER_CODE.format(marker=str(marker)))
    hf = json.loads((d / "config.json").read_text())
    hf["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (d / "config.json").write_text(json.dumps(hf))
    with caplog.at_level(logging.WARNING, logger="jaxalign.io"):
        model = load_model(d)
    assert model.config.hidden_size == 32 and not marker.exists()
    assert f"{d / 'config.json'}: ignoring 'auto_map'" in caplog.text and "never runs code" in caplog.text


def test_a_chat_template_cannot_escape_its_sandbox(tmp_path, tok):
    """Chat templates are Jinja run by transformers in a sandbox; an escape attempt is a row
    error, not code execution."""
    from jaxalign.data import prepare_dataset
    from jaxalign.io.tokenizer import load_tokenizer

    d = _tiny_tokenizer_dir(tmp_path / "tok")
    marker = tmp_path / "RAN"
    (d / "chat_template.jinja").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__['os'].system('touch " + str(marker)
        + "') }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n")
    with pytest.raises(JaxalignError) as e:
        prepare_dataset(data, load_tokenizer(d), max_length=64, max_prompt_length=32)
    one_error_line(e.value, f"{data}: row 0 (0-based): the chat template cannot render this conversation (")
    assert not marker.exists()


def test_data_and_config_text_is_never_evaluated(tmp_path, tok):
    from jaxalign.config import load_config
    from jaxalign.data import prepare_dataset

    marker = tmp_path / "RAN"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"prompt": code, "completion": " " + code}) + "\n")
    csv = tmp_path / "d.csv"
    csv.write_text('prompt,completion\n"[' + code.replace('"', '""') + ']"," ok"\n')
    for path in (jsonl, csv):
        tokenized, stats = prepare_dataset(path, tok, max_length=512, max_prompt_length=256)
        assert stats.examples == 1
    assert tok.decode(tokenized[0]["input_ids"]).startswith("[__import__")  # the CSV cell, as text
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: \"{code}\"\nseed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(JaxalignError, match="could not determine a constructor"):
        load_config(cfg, [], algorithm="sft")
    assert load_config(None, [f"run_dir={code}"], algorithm="sft").run_dir == code
    assert not marker.exists()


# Calls that load pickles, run code from strings or models, or parse YAML beyond plain data.
_PICKLERS = r"(pickle|cPickle|joblib|dill|cloudpickle|marshal|shelve)"
FORBIDDEN = [rf"^\s*(import|from)\s+{_PICKLERS}\b", rf"\b{_PICKLERS}\.(load|loads|Unpickler|open)\b",
             r"torch\.load", r"allow_pickle\s*=\s*True", r"trust_remote_code\s*=\s*True",
             r"yaml\.unsafe_load", r"yaml\.load\((?![^)]*_StrictLoader)", r"(?<![.\w])eval\(", r"(?<![.\w])exec\(",
             r"yaml\.(Unsafe|Full)?Loader\b", r"__import__\("]


def test_the_package_source_has_no_unsafe_loading():
    """A lint with teeth: jaxalign's own code never unpickles, never evaluates strings, never
    trusts remote code. (``exec_module`` in jaxalign/rewards/functions.py imports the reward
    function the user names in their config: their own code, by design.)"""
    hits = []
    for path in sorted((ROOT / "jaxalign").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern in FORBIDDEN:
                if re.search(pattern, code):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
    assert "trust_remote_code=False" in (ROOT / "jaxalign/io/tokenizer.py").read_text()
