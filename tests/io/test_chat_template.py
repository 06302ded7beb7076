"""jaxalign.io.tokenizer: data.chat_template (a template file or a tokenizer dir) replaces the
tokenizer's chat template; bad values are one-line errors naming the key."""

from __future__ import annotations

import copy
import json

import pytest

from jaxalign.errors import JaxalignError
from jaxalign.io.tokenizer import read_chat_template, set_chat_template

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from jaxalign.data import tiny_tokenizer_path

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()), local_files_only=True)


def test_template_file_replaces_the_tokenizer_template(tok, tmp_path):
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    t = copy.deepcopy(tok)
    set_chat_template(t, tmp_path / "t.jinja")
    text = t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "[user] hi\n[assistant] "


def test_tokenizer_dir_gives_its_template(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "chat_template.jinja").write_text(TEMPLATE)
    assert read_chat_template(tmp_path / "a") == TEMPLATE
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    assert read_chat_template(tmp_path / "b") == TEMPLATE


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("  \n"), "empty"),
    (lambda p: p.write_bytes(b"\xff\xfe{{"), "not UTF-8"),
    (lambda p: p.mkdir(), "directory without chat_template.jinja"),
])
def test_bad_paths_are_one_line_errors_naming_the_key(tmp_path, setup, match):
    p = tmp_path / "t.jinja"
    setup(p)
    with pytest.raises(JaxalignError, match=match) as e:
        read_chat_template(p)
    assert str(e.value).startswith("config key 'data.chat_template': ") and "\n" not in str(e.value)


def test_syntax_error_names_the_key_and_line_and_keeps_the_old_template(tok, tmp_path):
    p = tmp_path / "bad.jinja"
    p.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    t = copy.deepcopy(tok)
    with pytest.raises(JaxalignError, match=r"config key 'data.chat_template': .*not a valid Jinja template at line 2"):
        set_chat_template(t, p)
    assert t.chat_template == tok.chat_template


def test_generation_markers_are_valid_template_syntax(tok, tmp_path):
    p = tmp_path / "g.jinja"
    p.write_text("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                 "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    t = copy.deepcopy(tok)
    set_chat_template(t, p)
    assert "generation" in t.chat_template
