"""GGUF files (llama.cpp) -> a Hugging Face config dict and HF-named float tensors.

Three things separate a GGUF from a HF checkpoint, and each is undone here:

- names: ``blk.3.attn_q.weight`` is HF's ``model.layers.3.self_attn.q_proj.weight``;
- values: most weights are quantised blocks (Q4_1, Q8_0, ...), dequantised with ``gguf.quants``
  one tensor at a time, so a load never holds two copies of the model;
- layout: llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` (weights *and* biases)
  of Llama-architecture models so its rotary kernel can rotate adjacent pairs; HF rotates halves.
  Qwen2 files are not permuted (llama.cpp runs them with NeoX-style RoPE, as HF does).

``dequantize`` returns arrays already in numpy (= HF) order: a linear weight is
``[out_features, in_features]``, the embedding ``[vocab, hidden]``.
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.io.paths import resolve_model_path

__all__ = ["GGUFFile", "gguf_config", "iter_gguf_tensors", "gguf_value", "open_gguf", "read_gguf", "resolve_model_path",
           "unpermute_qk", "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")
_HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# llama.cpp writes Llama-layout (permuted q/k) files under these architecture names.
_PERMUTED = ("llama", "mistral")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors that describe the model rather than parametrise it (read into the config instead).
_CONFIG_TENSORS = ("rope_freqs.weight",)
# Plain integer tensors: not quantised blocks (which dequantise to floats) but integers, which
# would pass for weights once cast; no Llama-family weight is stored this way.
_INTEGER_TYPES = ("I8", "I16", "I32", "I64")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a q or k projection (weight ``[rows, d_in]`` or bias).

    llama.cpp stores, per head, the rows as interleaved pairs ``(0, d/2), (1, d/2+1), ...``;
    this restores HF's order ``0..d/2-1, d/2..d-1``. ``n_heads`` is the number of query heads for
    q and of key/value heads for k.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor; ``None`` for config-only tensors (``rope_freqs``);
    ``KeyError`` for a tensor the Llama family does not have."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name in _CONFIG_TENSORS:
        return None
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}.{m[3]}"
    raise KeyError(gguf_name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class GGUFFile:
    """An open GGUF file: its HF config, and its tensors dequantised on demand.

    It is also a tensor source for :func:`jaxalign.io.params.load_causal_lm` (``names()``,
    ``shape(name)``, ``read(name, index)``): shapes come from the header, and ``read`` keeps the
    last ``cache_size`` dequantised tensors (default: one stacked parameter's worth) so that a
    sharded load, which reads every layer once per device, dequantises each tensor once.
    """

    def __init__(self, path, cache_size: int | None = None):
        self.path = resolve_model_path(path)
        self.reader = open_gguf(self.path)
        arch = self.value("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise JaxalignError(
                f"GGUF architecture {arch!r} in {self.path} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        self.gguf_architecture = arch
        self._infos = {}
        for t in self.reader.tensors:
            try:
                name = hf_tensor_name(t.name)
            except KeyError:
                raise JaxalignError(
                    f"{self.path}: GGUF tensor {t.name!r} has no Llama-family counterpart"
                ) from None
            if name is not None:
                self._infos[name] = t
        self.config = self._build_config()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size if cache_size is not None else self.config["num_hidden_layers"] + 1

    # ------------------------------------------------------------------ metadata

    def value(self, key: str, default: Any = None) -> Any:
        """A metadata value (``general.architecture``, ``llama.block_count``, ...), or ``default``."""
        return gguf_value(self.reader, key, default, self.path)

    def _required(self, key: str) -> Any:
        value = self.value(key)
        if value is None:
            raise JaxalignError(f"{self.path}: GGUF metadata field {key!r} is missing")
        return value

    def _build_config(self) -> dict:
        arch = self.gguf_architecture
        name = f"{self.value('general.name', '')} {self.value('general.basename', '')}".lower()
        # llama.cpp converts Mistral models to the 'llama' architecture; only the name tells them apart.
        model_type = "mistral" if arch == "llama" and "mistral" in name else arch
        p = arch + "."
        hidden = int(self._required(p + "embedding_length"))
        n_heads = int(self._required(p + "attention.head_count"))
        n_kv = self.value(p + "attention.head_count_kv", n_heads)
        if isinstance(n_kv, list):
            if len(set(n_kv)) != 1:
                raise JaxalignError(f"{self.path}: per-layer {p}attention.head_count_kv={n_kv} is not supported")
            n_kv = n_kv[0]
        head_dim = int(self.value(p + "attention.key_length", hidden // n_heads))
        rope_dim = self.value(p + "rope.dimension_count")
        if rope_dim is not None and int(rope_dim) != head_dim:
            raise JaxalignError(
                f"{self.path}: {p}rope.dimension_count={rope_dim} differs from head_dim={head_dim} "
                "(partial rotary embeddings are not supported)"
            )
        if "model.embed_tokens.weight" not in self._infos:
            raise JaxalignError(f"{self.path}: GGUF has no token_embd.weight tensor")
        theta = float(self.value(p + "rope.freq_base", 10000.0))
        has = lambda suffix: any(n.endswith(suffix) for n in self._infos)  # noqa: E731
        sliding = self.value(p + "attention.sliding_window")
        tok = "tokenizer.ggml."
        cfg = {
            "architectures": [_HF_ARCH[model_type]],
            "model_type": model_type,
            "vocab_size": int(self.shape("model.embed_tokens.weight")[0]),
            "hidden_size": hidden,
            "intermediate_size": int(self._required(p + "feed_forward_length")),
            "num_hidden_layers": int(self._required(p + "block_count")),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(n_kv),
            "head_dim": head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": float(self.value(p + "attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": theta,
            "rope_parameters": self._rope_parameters(p, theta, head_dim),
            "max_position_embeddings": int(self.value(p + "context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._infos,
            "bos_token_id": self.value(tok + "bos_token_id"),
            "eos_token_id": self.value(tok + "eos_token_id"),
            "pad_token_id": self.value(tok + "padding_token_id"),
            "attention_bias": has(".self_attn.q_proj.bias"),
        }
        if model_type == "llama":
            cfg["mlp_bias"] = has(".mlp.up_proj.bias")
        elif model_type == "mistral":
            cfg["sliding_window"] = int(sliding) if sliding else None
        elif model_type == "qwen2":
            cfg["use_sliding_window"] = bool(sliding)
            cfg["sliding_window"] = int(sliding) if sliding else None
        return cfg

    def _rope_parameters(self, p: str, theta: float, head_dim: int) -> dict:
        kind = self.value(p + "rope.scaling.type")
        if kind in (None, "none"):
            rope = {"rope_type": "default"}
        elif kind == "linear":
            rope = {"rope_type": "linear", "factor": float(self._required(p + "rope.scaling.factor"))}
        else:
            raise JaxalignError(f"{self.path}: RoPE scaling {kind!r} is not supported (supported: none, linear)")
        freqs = next((t for t in self.reader.tensors if t.name == "rope_freqs.weight"), None)
        if freqs is not None:
            rope = _llama3_rope_from_factors(np.asarray(freqs.data, np.float64), theta, head_dim, self.path)
        return {**rope, "rope_theta": theta}

    # ------------------------------------------------------------------ tensors

    def names(self) -> list[str]:
        """HF names of the tensors in the file, in file order."""
        return list(self._infos)

    def shape(self, name: str) -> tuple[int, ...]:
        """HF-layout shape of a tensor, from the header (no dequantisation)."""
        return tuple(int(d) for d in reversed(self._infos[name].shape))

    def tensor(self, name: str, dtype=np.float32) -> np.ndarray:
        """One tensor, dequantised, un-permuted, as a fresh ``dtype`` array in HF layout."""
        from gguf.quants import dequantize

        info = self._infos[name]
        kind = getattr(info.tensor_type, "name", str(info.tensor_type))
        if kind in _INTEGER_TYPES:
            raise JaxalignError(f"{self.path}: tensor {info.name!r} has dtype {kind}, expected floating-point "
                                "or quantised weights (jaxalign does not cast integer tensors to float)")
        try:
            w = dequantize(info.data, info.tensor_type).reshape(self.shape(name))
        except (ValueError, NotImplementedError) as e:
            raise JaxalignError(f"{self.path}: cannot dequantise {info.name!r} ({_first_line(e)})") from None
        if self.gguf_architecture in _PERMUTED:
            if ".self_attn.q_proj." in name:
                w = unpermute_qk(w, self.config["num_attention_heads"])
            elif ".self_attn.k_proj." in name:
                w = unpermute_qk(w, self.config["num_key_value_heads"])
        # np.array copies: an F32 tensor would otherwise be a view into the memory-mapped file.
        return np.array(w, dtype=dtype)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """``tensor(name)[index]`` in float32, through a small cache (the tensor-source protocol)."""
        w = self._cache.pop(name, None)
        if w is None:
            w = self.tensor(name)
        self._cache[name] = w
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return w[index]

    def iter_tensors(self, dtype=np.float32) -> Iterator[tuple[str, np.ndarray]]:
        """``(hf_name, array)`` for every tensor, dequantised one at a time."""
        for name in self._infos:
            yield name, self.tensor(name, dtype)


def gguf_value(reader, key: str, default: Any = None, path="GGUF file") -> Any:
    """Metadata value ``key`` of an open ``gguf.GGUFReader`` (a Python scalar, str or list)."""
    import gguf

    field = reader.get_field(key)
    if field is None:
        return default
    try:
        value = field.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise JaxalignError(f"{path}: GGUF metadata field {key!r} is unreadable ({_first_line(e)})") from None
    if field.types and field.types[0] == gguf.GGUFValueType.FLOAT32:
        # Stored as float32: print it shortest (1e-05, not 9.999999747378752e-06), as config.json has it.
        value = float(str(np.float32(value)))
    return value


def open_gguf(path) -> "gguf.GGUFReader":
    """A ``gguf.GGUFReader`` over ``path``, with every way the file can be broken as a JaxalignError.

    Parsing the header takes seconds (the vocabulary is ~10^5 strings), and a run opens the same
    file for the model and for the tokenizer, so the last two readers are kept (read-only maps).
    """
    path = Path(path)
    if not path.is_file():
        raise JaxalignError(f"{path}: no such GGUF file")
    stat = path.stat()
    return _open_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, _mtime_ns: int, size: int):
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # noqa: BLE001 -- a corrupt header surfaces as any of a dozen numpy/struct errors
        raise JaxalignError(f"{path}: not a valid GGUF file ({_first_line(e)})") from None
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise JaxalignError(f"{path}: truncated GGUF file (tensor {t.name!r} ends past the end of the file)")
    return reader


def _llama3_rope_from_factors(factors: np.ndarray, theta: float, head_dim: int, path) -> dict:
    """Llama 3.1-style RoPE parameters from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp bakes HF's ``rope_type: llama3`` into per-frequency divisors and keeps no parameters.
    Every Llama 3.x release uses low/high frequency factors 1 and 4 and an original context of
    8192; ``factor`` is read off a low-frequency divisor (or solved from a smoothed one), and the
    result is accepted only if it reproduces every divisor in the tensor.
    """
    low, high, old = 1.0, 4.0, 8192
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (old / wavelen - low) / (high - low)
    in_low, in_high = wavelen > old / low, wavelen < old / high
    mid = ~in_low & ~in_high
    factor = 1.0
    if factors.shape == wavelen.shape:
        if in_low.any():
            factor = float(factors[in_low][0])
        elif mid.any():
            s, v = smooth[mid][0], float(factors[mid][0])
            factor = (1 - s) / (1 / v - s)
    factor = float(np.round(factor, 4))
    expected = np.where(in_high, 1.0, np.where(in_low, factor, 1 / ((1 - smooth) / factor + smooth)))
    if factors.shape != wavelen.shape or not np.allclose(factors, expected, rtol=1e-4):
        raise JaxalignError(f"{path}: rope_freqs.weight does not match Llama 3 RoPE scaling "
                            "(low/high frequency factors 1/4, original context 8192); not supported")
    if factor == 1.0:
        return {"rope_type": "default"}
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": old}


def gguf_config(path) -> dict:
    """The HF ``config.json`` dict of a GGUF file (reads the header only, no tensor data)."""
    return GGUFFile(path).config


def iter_gguf_tensors(path, dtype=np.float32) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(hf_name, array)`` for every tensor of a GGUF file, dequantised one at a time.

    Lets a caller put each tensor on its device/sharding and drop it before the next is made.
    """
    yield from GGUFFile(path).iter_tensors(dtype)


def read_gguf(path, dtype=np.float32) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a GGUF file (``llama``, ``qwen2`` or ``mistral``) as a HF model.

    Args:
      path: a ``.gguf`` file, or an alias such as ``"smollm2-135m-instruct"``.
      dtype: numpy dtype of the returned tensors (dequantisation itself is in float32).
    Returns:
      ``(config, tensors)``: the ``config.json`` dict a transformers ``LlamaConfig`` /
      ``Qwen2Config`` / ``MistralConfig`` would save, and the parameters under their HF names in
      HF layout (``lm_head.weight`` only when the file has an untied ``output.weight``).
    Raises:
      JaxalignError: not a GGUF file, truncated, or an unsupported architecture.
    """
    f = GGUFFile(path)
    return f.config, dict(f.iter_tensors(dtype))
