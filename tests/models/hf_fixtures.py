"""Tiny random transformers models (PyTorch) saved as HF dirs, the independent reference."""

from __future__ import annotations

import pytest

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5)

CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    # attention_bias gives Llama's o_proj a bias too (not Qwen2's or Mistral's)
    "llama_bias": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True)),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5)),
}

_S, _F = "sliding_attention", "full_attention"
# Qwen3 and Gemma 2/3 (tests/models/test_families.py). Windows of 5 against sequences of 11; Gemma
# 2 with a query_pre_attn_scalar unlike head_dim and soft-caps small enough to bite at these sizes.
FAMILY_CASES = {
    # transformers' Qwen2 slides only from layer max_window_layers on, like Qwen3
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=5,
                                                             max_window_layers=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "qwen3_window": ("Qwen3Config", "Qwen3ForCausalLM", dict(use_sliding_window=True, sliding_window=5,
                                                             max_window_layers=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=8, sliding_window=5, query_pre_attn_scalar=4, attn_logit_softcapping=0.2,
        final_logit_softcapping=0.3)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=8, sliding_window=5, layer_types=[_S, _F, _S],
        rope_parameters={_F: {"rope_type": "default", "rope_theta": 100.0},
                         _S: {"rope_type": "default", "rope_theta": 10.0}})),
    # transformers' default 5:1 pattern over 7 layers, untied, global RoPE linearly scaled
    "gemma3_pattern": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=8, sliding_window=4, num_hidden_layers=7, tie_word_embeddings=False,
        rope_parameters={_F: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
                         _S: {"rope_type": "default", "rope_theta": 10.0}})),
}

# RoPE scalings beyond llama3/linear (tests/models/test_rope.py). Dynamic NTK grows its base only
# past max_position_embeddings: 8 here, against sequences of 11.
ROPE_CASES = {
    "llama_yarn": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen3_yarn": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_parameters={
        "rope_type": "yarn", "rope_theta": 1000.0, "factor": 8.0, "original_max_position_embeddings": 32,
        "beta_fast": 16.0, "beta_slow": 2.0})),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM", dict(max_position_embeddings=8, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 100.0, "factor": 2.0})),
}


def make_hf_model(kind: str, out_dir, seed: int = 0):
    """Build, randomise (non-trivial norms and biases too) and save a tiny HF model; return it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls, extra = {**CASES, **FAMILY_CASES, **ROPE_CASES}[kind]
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **extra})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def right_padded_batch(vocab: int, lens, seed: int = 0):
    """``(ids, mask)`` numpy arrays: one right-padded row per length in ``lens``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (len(lens), max(lens)))
    mask = (np.arange(max(lens))[None] < np.array(lens)[:, None]).astype(np.int64)
    return ids, mask


def max_err_on_real(a, b, lens) -> float:
    """The largest ``|a - b|`` over each row's first ``lens[i]`` (real, not padded) positions."""
    import numpy as np

    return max(np.abs(a[i, :n] - b[i, :n]).max() for i, n in enumerate(lens))
