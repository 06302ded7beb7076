"""RoPE scalings (jaxalign/models/rope.py) against transformers: YaRN and dynamic NTK."""

import numpy as np
import pytest

from jaxalign import forward_logits, load_model, save_model
from jaxalign.models.config import ModelConfig

from tests.models.hf_fixtures import ROPE_CASES, make_hf_model, max_err_on_real, right_padded_batch

torch = pytest.importorskip("torch")

LENS = [11, 7, 1]


def _batch(vocab, seed=0):
    return right_padded_batch(vocab, LENS, seed)


def _max_err(a, b):
    return max_err_on_real(a, b, LENS)


def _ref_logits(ref, ids, mask):
    with torch.no_grad():
        return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("kind", sorted(ROPE_CASES))
def test_scaled_rope_logits_match_transformers_and_export(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = make_hf_model(kind, tmp_path / "ref")
    model = load_model(tmp_path / "ref")
    assert model.config.rope_scaling_dict["rope_type"] == kind.split("_")[1]
    ids, mask = _batch(model.config.vocab_size)
    want = _ref_logits(ref, ids, mask)
    assert _max_err(np.asarray(forward_logits(model, ids, mask)), want) < 1e-4
    out = save_model(model, tmp_path / "export")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert _max_err(_ref_logits(back, ids, mask), want) < 1e-6


@pytest.mark.parametrize("scaling", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    {"rope_type": "dynamic", "factor": 2.0},
])
def test_scaling_changes_the_output(scaling):
    """The parity test can fail: each scaling alters logits at these lengths (dynamic only past
    max_position_embeddings, so not at all on a batch within it)."""
    from jaxalign import init_model

    base = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=100.0,
                       max_position_embeddings=8)
    ids, mask = _batch(97)
    plain = np.asarray(forward_logits(init_model(base), ids, mask))
    scaled = np.asarray(forward_logits(init_model(base.replace(rope_scaling=scaling)), ids, mask))
    assert _max_err(scaled, plain) > 1e-5
    if scaling["rope_type"] == "dynamic":
        short = np.asarray(forward_logits(init_model(base.replace(rope_scaling=scaling)), ids[:, :8], mask[:, :8]))
        np.testing.assert_array_equal(short, np.asarray(forward_logits(init_model(base), ids[:, :8], mask[:, :8])))
