"""A tiny random model over the shipped byte-level tokenizer, for the APE tests."""

import pytest

from jaxalign import init_model
from jaxalign.data import tiny_tokenizer_path
from jaxalign.models.config import ModelConfig

TINY = ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=2, pad_token_id=3)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()))


@pytest.fixture(scope="module")
def model():
    m = init_model(TINY, seed=0)
    # A peaky next-token distribution: greedy answers are well separated and scores differ.
    m.lm_head.weight[...] = m.lm_head.weight[...] * 20.0
    return m
