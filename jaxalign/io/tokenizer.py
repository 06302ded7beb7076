"""Tokenizers from a Hugging Face directory or a GGUF file, chat templates, and EOS ids.

A GGUF carries no ``tokenizer.json``: its vocabulary, merges, special-token ids and chat template
are metadata under llama.cpp's key names. transformers can turn those into a fast tokenizer
(``AutoTokenizer.from_pretrained(dir, gguf_file=...)``), but its GGUF reader imports torch.
Here the metadata is read with ``gguf.GGUFReader`` and handed to the torch-free half of
transformers' converter (``convert_gguf_tokenizer``), which gives the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from jaxalign.errors import JaxalignError
from jaxalign.io.paths import resolve_model_path

# Name of the special token -> llama.cpp metadata key of its id (as transformers maps them).
_SPECIAL_TOKEN_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}

# Tokens llama.cpp treats as end-of-generation when a vocabulary has them (llama-vocab.cpp):
# chat models end a turn with one of these rather than with the tokenizer's eos_token.
_END_OF_GENERATION = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>", "<|return|>", "<|call|>", "<EOT>", "</s>",
)


def load_tokenizer(path):
    """Load a tokenizer (a ``transformers.PreTrainedTokenizerFast``).

    Args:
      path: a Hugging Face model/tokenizer directory (read with ``AutoTokenizer``, local files
        only, no remote code), a ``.gguf`` file (built without torch), an alias such as
        ``"smollm2-135m-instruct"``, or a Hub id ``org/name[@revision]`` (fetched into the HF cache).
    Raises:
      JaxalignError: the path does not exist, or holds no usable tokenizer.
    """
    p = resolve_model_path(path)
    if p.is_dir():
        return _hf_tokenizer(p)
    if p.is_file() and (p.suffix == ".gguf" or _has_gguf_magic(p)):
        return gguf_tokenizer(p)
    if not p.exists():
        raise JaxalignError(f"{path}: no such file or directory")
    raise JaxalignError(f"{path}: not a Hugging Face directory or a .gguf file")


def _has_gguf_magic(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def _hf_tokenizer(p: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "custom code" in msg or "trust_remote_code" in msg:
            raise JaxalignError(f"{p}: this tokenizer needs its own Python code (auto_map in tokenizer_config.json); "
                                "jaxalign never runs code from a model directory (trust_remote_code=False)") from None
        raise JaxalignError(f"{p}: cannot load a tokenizer from this directory ({msg})") from None


def _gguf_converter():
    """transformers' torch-free GGUF tokenizer pieces: (metadata key map, converter)."""
    try:  # transformers >= 5.x with the integrations.gguf package
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:  # transformers 5.0-era layout
        from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer


def gguf_tokenizer(path):
    """A ``PreTrainedTokenizerFast`` from a GGUF file's metadata, without importing torch.

    Mirrors ``transformers``' own GGUF tokenizer loading: the same metadata mapping, the same
    ``convert_gguf_tokenizer``, the chat template from ``tokenizer.chat_template``, and
    bos/eos/unk/pad named after the tokens at the file's ids.
    """
    from transformers import PreTrainedTokenizerFast

    from jaxalign.io.gguf import gguf_value, open_gguf

    path = Path(path)
    reader = open_gguf(path)
    mapping, convert = _gguf_converter()
    groups = {}
    for group in ("tokenizer", "tokenizer_config"):
        groups[group] = {}
        for key, name in mapping[group].items():
            value = gguf_value(reader, f"tokenizer.{key}", None, path)
            if value is not None:
                groups[group][name] = value
    tokenizer_dict, config = groups["tokenizer"], groups["tokenizer_config"]
    tokens = tokenizer_dict.get("tokens")
    if not tokens:
        raise JaxalignError(f"{path}: GGUF file has no tokenizer (metadata 'tokenizer.ggml.tokens' is missing)")
    if tokenizer_dict.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
        config.setdefault("add_bos_token", True)
    architecture = gguf_value(reader, "general.architecture", "llama", path)
    try:
        backend, extra = convert(architecture, tokenizer_dict)
    except (ValueError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxalignError(f"{path}: cannot build a tokenizer from this GGUF ({msg})") from None
    config.update(extra or {})
    # The file's ids name the special tokens, and win over a converter's guesses (transformers
    # 5.0's Llama converter swaps bos and eos).
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = gguf_value(reader, key, None, path)
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise JaxalignError(f"{path}: GGUF metadata '{key}'={token_id} is outside the vocabulary")
        config[name] = tokens[token_id] if token_id is not None else None
    # Ids and the tokenizer's model name are config, not tokenizer arguments (transformers 5.0 maps them).
    for stale in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id", "model_type"):
        config.pop(stale, None)
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=str(path), **config)


def apply_chat_template(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True,
                        **template_kwargs) -> list[int]:
    """Token ids of ``messages`` (``[{"role", "content"}, ...]``) rendered with the chat template.

    The text is rendered first and then encoded without adding special tokens, so a template
    that writes its own BOS does not get a second one (what ``apply_chat_template(tokenize=True)``
    does too).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise JaxalignError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_ids(tokenizer) -> list[int]:
    """Every token id that should end generation, the tokenizer's ``eos_token_id`` first.

    Adds the ids of ``generation_config.json`` (when the tokenizer came from a HF directory that has
    one) and of the end-of-turn tokens llama.cpp recognises (``<|im_end|>``, ``<|endoftext|>``,
    ``<|eot_id|>``, ...) that the vocabulary defines as special or added tokens.
    """
    ids: list[int] = []

    def add(i):
        if isinstance(i, int) and i >= 0 and i not in ids:
            ids.append(i)

    add(tokenizer.eos_token_id)
    gen_config = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "generation_config.json"
    if gen_config.is_file():
        try:
            eos = json.loads(gen_config.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError):
            eos = None
        for i in eos if isinstance(eos, list) else [eos]:
            add(i)
    added = {str(tok): i for i, tok in tokenizer.added_tokens_decoder.items()}
    for token in _END_OF_GENERATION:
        if token in added:
            add(added[token])
    return ids


def read_chat_template(path, key: str = "data.chat_template") -> str:
    """The Jinja chat template at ``path``: a template file (``.jinja``, any name), or a tokenizer
    directory (its ``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``).

    Raises:
      JaxalignError: one line naming ``key``: no such file, not UTF-8, empty, or no template there.
    """
    p = Path(str(path)).expanduser()
    where = f"config key {key!r}: {path}"
    if p.is_dir():
        if (p / "chat_template.jinja").is_file():
            p = p / "chat_template.jinja"
        elif (p / "tokenizer_config.json").is_file():
            try:
                template = json.loads((p / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                template = None
            if not isinstance(template, str) or not template.strip():
                raise JaxalignError(f"{where}: the directory's tokenizer_config.json has no chat_template")
            return template
        else:
            raise JaxalignError(f"{where}: a directory without chat_template.jinja or tokenizer_config.json")
    if not p.is_file():
        raise JaxalignError(f"{where}: no such file (expected a Jinja chat template file)")
    try:
        template = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JaxalignError(f"{where}: not UTF-8 text") from None
    except OSError as e:
        raise JaxalignError(f"{where}: cannot read it ({e.strerror or e})") from None
    if not template.strip():
        raise JaxalignError(f"{where}: the file is empty")
    return template


def set_chat_template(tokenizer, path, key: str = "data.chat_template") -> None:
    """Give ``tokenizer`` the chat template at ``path`` (:func:`read_chat_template`), so that every
    rendering of chat (data, rollout prompts, the exported tokenizer) uses it. A template that is
    not valid Jinja is a one-line error naming ``key`` and the line."""
    template = read_chat_template(path, key)
    old = tokenizer.chat_template
    tokenizer.chat_template = template
    try:  # compile once now: a syntax error is the config's fault, found before any data is read
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - only a syntax error is reported here; see below
        import jinja2

        if isinstance(e, jinja2.TemplateSyntaxError):
            tokenizer.chat_template = old
            line = f" at line {e.lineno}" if e.lineno else ""
            raise JaxalignError(f"config key {key!r}: {path}: not a valid Jinja template{line} "
                                f"({' '.join(str(e.message or e).split())[:200]})") from None
        # Any other failure (a template that insists on a system message, ...) is about the
        # conversation, not the template: the data's own rows report it with their row number.
