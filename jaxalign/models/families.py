"""What the supported architectures share and where they differ, as data.

Every family runs on the one decoder of :mod:`jaxalign.models.llama`; a :class:`Family` says
which of its optional pieces an architecture switches on. This module also reads the
family-specific ``config.json`` fields (Gemma's soft-capping, per-layer sliding windows, Gemma 3's
two RoPE bases) and writes them back for an export.
"""

from __future__ import annotations

import dataclasses

from jaxalign.errors import JaxalignError

# The linear layers every family's decoder layer has, by their transformers/PEFT names: the
# targets ``model.lora.targets`` may name.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

SLIDING, FULL = "sliding_attention", "full_attention"
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class Family:
    """The architecture traits that are not ``config.json`` numbers."""

    model_type: str
    qkv_bias: bool = False  # default of attention_bias when config.json does not say
    o_bias: bool = False  # o_proj has a bias when attention_bias (transformers' Llama, Qwen3, Gemma)
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (Qwen3, Gemma 3)
    gemma: bool = False  # (1 + w) norms, norms after attention/MLP too, sqrt(hidden)-scaled embeddings
    defaults: tuple = ()  # this family's transformers config defaults for fields a config may omit

    def default(self, key, fallback=None):
        return dict(self.defaults).get(key, fallback)


_GEMMA = (("tie_word_embeddings", True), ("rms_norm_eps", 1e-6), ("hidden_act", "gelu_pytorch_tanh"),
          ("query_pre_attn_scalar", 256), ("sliding_window", 4096))

FAMILIES = {
    "LlamaForCausalLM": Family("llama", o_bias=True),
    "MistralForCausalLM": Family("mistral"),
    "Qwen2ForCausalLM": Family("qwen2", qkv_bias=True),
    "Qwen3ForCausalLM": Family("qwen3", o_bias=True, qk_norm=True, defaults=(("rms_norm_eps", 1e-6),)),
    "Gemma2ForCausalLM": Family("gemma2", o_bias=True, gemma=True, defaults=_GEMMA + (
        ("final_logit_softcapping", 30.0), ("attn_logit_softcapping", 50.0))),
    "Gemma3ForCausalLM": Family("gemma3_text", o_bias=True, qk_norm=True, gemma=True, defaults=_GEMMA + (
        ("rope_theta", 1_000_000.0),)),
}


def _default_layer_types(arch: str, cfg: dict, n: int, sliding) -> list[str] | None:
    # transformers' own defaults when config.json has no layer_types (configs written by 4.x).
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        first = int(cfg.get("max_window_layers", 28))
        return [SLIDING if sliding and i >= first else FULL for i in range(n)]
    if arch == "Gemma2ForCausalLM":
        return [SLIDING if (i + 1) % 2 else FULL for i in range(n)]
    if arch == "Gemma3ForCausalLM":
        pattern = int(cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6)))
        return [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
    return None


def normalise_rope(arch: str, cfg: dict, source: str) -> tuple[dict, float | None]:
    """``cfg`` with Gemma 3's per-layer-type RoPE folded into the usual keys (the global layers'
    parameters), and the sliding layers' RoPE base (None for the other families)."""
    if arch != "Gemma3ForCausalLM":
        return cfg, None
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and FULL in rp:  # transformers 5: one dict per layer type
        full, local = dict(rp[FULL] or {}), dict(rp.get(SLIDING) or {})
        local_theta = local.get("rope_theta", 10_000.0)
    else:  # transformers 4: rope_theta / rope_scaling for the global layers, one local base
        full, local = dict(rp or {}), {}
        local_theta = cfg.get("rope_local_base_freq", 10_000.0)
    kind = local.get("rope_type", local.get("type", "default"))
    if kind != "default":
        raise JaxalignError(f"{source}: rope_parameters.{SLIDING}: rope_type {kind!r} is not supported "
                            "on Gemma 3's sliding layers (only 'default')")
    full.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
    return {**cfg, "rope_parameters": full}, float(local_theta)


def family_fields(arch: str, cfg: dict, source: str, n_layers: int, sliding) -> dict:
    """ModelConfig keyword arguments read from ``cfg`` for this family (activation, soft-capping,
    query scale, per-layer sliding/global pattern)."""
    fam = FAMILIES[arch]
    if cfg.get("use_bidirectional_attention"):
        raise JaxalignError(f"{source}: use_bidirectional_attention=true (an encoder, e.g. EmbeddingGemma) "
                            "is not supported")
    act = cfg.get("hidden_activation") if fam.gemma else None
    act = act or cfg.get("hidden_act") or fam.default("hidden_act", "silu")
    out = {"hidden_act": act}
    if fam.gemma:
        for key in ("query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping"):
            v = cfg.get(key, fam.default(key))
            out[key] = float(v) if v is not None else None
    types = cfg.get("layer_types")
    if types is None:
        types = _default_layer_types(arch, cfg, n_layers, sliding)
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layers or not set(types) <= {SLIDING, FULL}:
            raise JaxalignError(f"{source}: layer_types must list {n_layers} entries of "
                                f"{SLIDING!r}/{FULL!r}, got {types!r}")
        out["layer_types"] = tuple(types)
    return out


def family_hf_fields(config) -> dict:
    """The ``config.json`` entries of ``config``'s family beyond the Llama ones (export)."""
    fam = FAMILIES[config.architecture]
    out = {}
    if config.layer_types is not None:
        out["layer_types"] = list(config.layer_types)
    if config.model_type == "qwen3":
        out["attention_bias"] = config.attention_bias
    if config.model_type in ("qwen2", "qwen3"):
        slides = config.sliding_layers
        out.update(use_sliding_window=config.sliding_window is not None,
                   sliding_window=config.sliding_window,
                   # the first sliding layer, for readers of the older key (transformers 5 reads layer_types)
                   max_window_layers=slides.index(True) if True in slides else config.num_hidden_layers)
    if fam.gemma:
        q = config.query_pre_attn_scalar
        out.update(hidden_activation=config.hidden_act, attention_bias=config.attention_bias,
                   # transformers' Gemma configs accept only an int here
                   query_pre_attn_scalar=int(q) if q is not None and float(q).is_integer() else q,
                   sliding_window=config.sliding_window,
                   final_logit_softcapping=config.final_logit_softcapping,
                   attn_logit_softcapping=config.attn_logit_softcapping)
    if config.architecture == "Gemma3ForCausalLM":
        full = {"rope_type": "default", "rope_theta": config.rope_theta, **config.rope_scaling_dict}
        out["rope_parameters"] = {FULL: full, SLIDING: {"rope_type": "default",
                                                        "rope_theta": config.rope_local_theta}}
    return out
