"""ModelConfig: the supported decoder families (Llama 2/3, SmolLM, Qwen2, Mistral, Qwen3, Gemma 2,
Gemma 3 text) as one dataclass.

Read from a Hugging Face ``config.json`` (transformers 4 or 5 spelling of the RoPE keys) and
written back in transformers 5's spelling, so an exported model loads with ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from jaxalign.errors import JaxalignError
from jaxalign.models import families
from jaxalign.models.families import ACTIVATIONS, FAMILIES, FULL, SLIDING

# architecture name -> its Family (model_type and the optional decoder pieces it uses)
ARCHITECTURES = FAMILIES
_MODEL_TYPE_TO_ARCH = {v.model_type: k for k, v in ARCHITECTURES.items()}
# Sequence-classification heads of the same backbones (reward models) load as their backbone.
_HEAD_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "Model")

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")
# Sizes and constants a config.json must give as positive numbers.
_POSITIVE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
                    "rms_norm_eps", "rope_theta", "rope_local_theta", "query_pre_attn_scalar",
                    "final_logit_softcapping", "attn_logit_softcapping")

_DTYPES = ("bfloat16", "float16", "float32")


def parse_dtype(name: Any, key: str = "dtype"):
    """'float32' | 'bfloat16' | 'float16' | a jnp dtype -> jnp dtype; anything else is an error."""
    # JAX is imported here, not with the module: the config checks read ModelConfig's fields
    # before anything needs JAX (a config error answers without loading it).
    import jax.numpy as jnp

    if name is None:
        return None
    if not isinstance(name, str):
        return jnp.dtype(name).type
    if name not in _DTYPES:
        raise JaxalignError(f"{key}: unknown dtype {name!r} (expected one of {list(_DTYPES)})")
    return getattr(jnp, name)


def dtype_overrides(dtype: str | None, compute_dtype: str | None = None) -> dict:
    """ModelConfig overrides for a load: ``dtype`` for the weights, ``compute_dtype`` for matmuls
    (default: the same as the weights)."""
    out = {}
    if dtype is not None:
        out["param_dtype"] = out["dtype"] = dtype
    if compute_dtype is not None:
        out["dtype"] = compute_dtype
    return out


# model.remat: what the backward pass recomputes (nothing, attention scores, everything but the
# weight matmuls' outputs, whole blocks), from most memory to least.
REMAT_MODES = (False, "attention", "dots", True)


def is_remat_mode(value) -> bool:
    """``value`` is one of :data:`REMAT_MODES` (``1`` is not ``True`` here, nor ``"true"``)."""
    return any(value is m if isinstance(m, bool) else value == m for m in REMAT_MODES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only causal LM of one of the supported families.

    ``param_dtype`` is the storage dtype of the weights; ``dtype`` the compute dtype of matmuls
    (norms, softmax and logits' log-softmax are always float32).

    ``layer_types``: per layer ``"sliding_attention"`` or ``"full_attention"`` (Qwen3, Gemma);
    ``None`` means every layer uses ``sliding_window`` when it is set (Mistral, Qwen2).
    ``rope_local_theta``: the RoPE base of the sliding layers (Gemma 3), else ``rope_theta``.
    ``query_pre_attn_scalar``: attention scores are divided by its square root instead of
    ``head_dim``'s (Gemma). The soft-capping values ``c`` map ``x -> c * tanh(x / c)``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | tuple | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    architecture: str = "LlamaForCausalLM"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | tuple | None = None
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    hidden_act: str = "silu"
    layer_types: tuple | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None

    def __post_init__(self):
        # Frozen and hashable: the config is static data of the nnx graph (a jit cache key), so
        # the RoPE dict and the EOS list are stored as tuples.
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.architecture not in ARCHITECTURES:
            raise JaxalignError(
                f"unsupported architecture {self.architecture!r} "
                f"(supported: {', '.join(ARCHITECTURES)})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise JaxalignError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise JaxalignError(f"head_dim={self.head_dim} must be even for RoPE")
        rope_type = self.rope_scaling_dict.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise JaxalignError(
                f"rope_scaling type {rope_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        parse_dtype(self.param_dtype, "param_dtype")
        parse_dtype(self.dtype, "dtype")
        if self.hidden_act not in ACTIVATIONS:
            raise JaxalignError(f"hidden_act {self.hidden_act!r} is not supported "
                                f"(supported: {', '.join(ACTIVATIONS)})")
        # Gemma-only numbers on another family would be dropped by an export: refuse them here.
        gemma_only = [k for k in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping")
                      if getattr(self, k) is not None and not self.family.gemma]
        if self.rope_local_theta is not None and self.architecture != "Gemma3ForCausalLM":
            gemma_only.append("rope_local_theta")
        if gemma_only:
            raise JaxalignError(f"{gemma_only[0]} is a Gemma setting; {self.architecture} has no such field")
        if self.layer_types is not None and (len(self.layer_types) != self.num_hidden_layers
                                             or not set(self.layer_types) <= {SLIDING, FULL}):
            raise JaxalignError(f"layer_types must list {self.num_hidden_layers} entries of "
                                f"{SLIDING!r}/{FULL!r}, got {self.layer_types!r}")

    @property
    def rope_scaling_dict(self) -> dict:
        return dict(self.rope_scaling or ())

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.architecture].model_type

    @property
    def family(self) -> families.Family:
        return ARCHITECTURES[self.architecture]

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: whether it is a sliding layer (it attends the last ``sliding_window``
        positions when that is set; on Gemma 3 it also uses the local RoPE base)."""
        if self.layer_types is None:
            return (self.sliding_window is not None,) * self.num_hidden_layers
        return tuple(t == SLIDING for t in self.layer_types)

    @property
    def jnp_dtype(self):
        return parse_dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return parse_dtype(self.param_dtype)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, i, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = d * q * 2 + d * kv * 2 + (q + 2 * kv if self.attention_bias else 0)
        attn += (d if self.attention_bias and self.family.o_bias else 0)
        attn += 2 * self.head_dim if self.family.qk_norm else 0
        mlp = 3 * d * i
        per_layer = attn + mlp + (4 if self.family.gemma else 2) * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + L * per_layer + d + head

    # ---------------------------------------------------------------- HF config.json

    @classmethod
    def from_hf_dict(cls, cfg: dict, source: str = "config.json", **overrides) -> "ModelConfig":
        """Build from a transformers config dict (``config.json`` contents)."""
        arch = _architecture_of(cfg, source)
        fam = ARCHITECTURES[arch]
        try:
            cfg, rope_local_theta = families.normalise_rope(arch, cfg, source)
            n_heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            rope_params = dict(cfg.get("rope_parameters") or {})
            rope_scaling = cfg.get("rope_scaling") or None
            rope_theta = rope_params.pop("rope_theta", cfg.get("rope_theta", fam.default("rope_theta", 10000.0)))
            if rope_scaling is None and rope_params:
                rope_scaling = rope_params
            if rope_scaling is not None:
                rope_scaling = dict(rope_scaling)
                # transformers 4 spelled it "type"; 5 spells it "rope_type".
                rope_scaling["rope_type"] = rope_scaling.pop("type", rope_scaling.get("rope_type", "default"))
                rope_scaling.pop("rope_theta", None)
                if rope_scaling["rope_type"] == "default" and len(rope_scaling) == 1:
                    rope_scaling = None
            bias_default = fam.qkv_bias
            sliding = cfg.get("sliding_window", fam.default("sliding_window"))
            if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and not cfg.get("use_sliding_window", False):
                sliding = None
            n_layers = int(cfg["num_hidden_layers"])
            kw = dict(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=n_heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
                head_dim=int(cfg.get("head_dim") or hidden // n_heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", fam.default("rms_norm_eps", 1e-5))),
                rope_theta=float(rope_theta),
                rope_scaling=rope_scaling,
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", fam.default("tie_word_embeddings", False))),
                attention_bias=bool(cfg.get("attention_bias", bias_default)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                sliding_window=int(sliding) if sliding else None,
                architecture=arch,
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=cfg.get("eos_token_id"),
                pad_token_id=cfg.get("pad_token_id"),
                rope_local_theta=rope_local_theta,
                **families.family_fields(arch, cfg, source, n_layers, sliding),
            )
        except KeyError as e:
            raise JaxalignError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as e:
            raise JaxalignError(f"{source}: bad value ({e})") from None
        for name in _POSITIVE_FIELDS:
            v = kw.get(name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise JaxalignError(f"{source}: {name} must be > 0, got {v}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            ids = kw[name]
            for i in ids if isinstance(ids, list) else [ids]:
                if i is not None and (isinstance(i, bool) or not isinstance(i, int)):
                    raise JaxalignError(f"{source}: {name} must be a token id (an integer), got {ids!r}")
        if kw["mlp_bias"]:
            raise JaxalignError(f"{source}: mlp_bias=true is not supported")
        kw.update(overrides)
        try:
            return cls(**kw)
        except JaxalignError as e:
            if overrides:  # the bad value may be the caller's, not the file's
                raise
            raise JaxalignError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> "ModelConfig":
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise JaxalignError(f"{path}: not found") from None
        except json.JSONDecodeError as e:
            raise JaxalignError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_hf_dict(cfg, source=str(path), **overrides)

    def to_hf_dict(self, architecture: str | None = None) -> dict:
        """transformers-5 ``config.json`` contents (``architecture`` overrides, e.g. for heads)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope.update(self.rope_scaling_dict)
        out = {
            "architectures": [architecture or self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        if self.model_type == "qwen2":
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
        out.update(families.family_hf_fields(self))
        if self.architecture == "Gemma3ForCausalLM":
            del out["rope_theta"]  # per layer type, inside rope_parameters
        return out


def _architecture_of(cfg: dict, source: str) -> str:
    if not isinstance(cfg, dict):
        raise JaxalignError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    archs = cfg.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise JaxalignError(f"{source}: 'architectures' must be a list of class names, got {archs!r}")
    # model_type "gemma3" is the multimodal Gemma 3 (vision tower + text): its Gemma3Model /
    # Gemma3ForSequenceClassification must not pass for the text-only Gemma3ForCausalLM.
    multimodal = cfg.get("model_type") == "gemma3"
    for a in archs:
        if a in ARCHITECTURES and not multimodal:
            return a
        for suffix in _HEAD_SUFFIXES:
            # transformers names the text-only Gemma 3 heads Gemma3Text*
            base = a.replace("Gemma3Text", "Gemma3")[: -len(suffix)] + "ForCausalLM" if a.endswith(suffix) else None
            if base in ARCHITECTURES and not multimodal:
                return base
    mt = cfg.get("model_type")
    if not archs and isinstance(mt, str) and mt in _MODEL_TYPE_TO_ARCH:
        return _MODEL_TYPE_TO_ARCH[mt]
    named = archs[0] if archs else mt
    raise JaxalignError(
        f"{source}: unsupported architecture {named!r} (supported: {', '.join(ARCHITECTURES)})"
    )
